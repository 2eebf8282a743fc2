wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["Idempotency-Key"] = "k" .. n .. "-" .. math.random(1e9), ["Content-Type"] = "application/json"}, '{"channel":"bench:' .. (n % 100) .. '","data":{"n":' .. n .. ',"text":"hello from the benchmark"}}')
end
