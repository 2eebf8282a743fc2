wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"channel":"dur:' .. (n % 100) .. '","data":{"n":' .. n .. ',"text":"hello from the benchmark"}}')
end
