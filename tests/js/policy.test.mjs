// Pure policy functions: the reconnect delay and the close-code decision.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, closeAction } from '../../static/herald.mjs';

const B = { baseMs: 100, maxMs: 5000 };

test('backoff: delay stays within [0, min(maxMs, baseMs * 2^attempt))', () => {
  for (let attempt = 0; attempt <= 40; attempt++) {
    const cap = Math.min(B.maxMs, B.baseMs * 2 ** attempt);
    for (const r of [0, 0.25, 0.5, 0.999999999]) {
      const d = backoffDelay(attempt, B, () => r);
      assert.ok(Number.isInteger(d), `integer delay, got ${d}`);
      assert.ok(d >= 0 && d < cap, `attempt ${attempt}, r ${r}: ${d} not in [0, ${cap})`);
    }
  }
});

test('backoff: the cap doubles per attempt until maxMs', () => {
  const top = (a) => backoffDelay(a, B, () => 0.999999999);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 60].map(top), [99, 199, 399, 799, 1599, 3199, 4999, 4999, 4999]);
  assert.equal(backoffDelay(3, B, () => 0.5), 400);
  assert.equal(backoffDelay(3, B, () => 0), 0, 'full jitter may go down to 0');
});

test('backoff: huge attempts do not overflow past maxMs', () => {
  assert.equal(backoffDelay(5000, B, () => 0.999999999), 4999);
  assert.equal(backoffDelay(Number.MAX_SAFE_INTEGER, B, () => 0.5), 2500);
});

test('backoff: full jitter spreads delays over the whole range (Math.random)', () => {
  const samples = Array.from({ length: 2000 }, () => backoffDelay(4, B));
  const cap = 1600;
  assert.ok(samples.every((d) => d >= 0 && d < cap));
  // Every tenth of the range is hit: not a constant, not "cap/2 + small jitter".
  const buckets = new Set(samples.map((d) => Math.floor((d / cap) * 10)));
  assert.equal(buckets.size, 10, `buckets hit: ${[...buckets].sort()}`);
  assert.ok(new Set(samples).size > 500, 'delays vary');
});

test('backoff: defaults are base 500 ms, max 30 s', () => {
  assert.equal(backoffDelay(0, undefined, () => 0.999999999), 499);
  assert.equal(backoffDelay(20, {}, () => 0.999999999), 29999);
});

test('close codes: reconnect on 1001, 1006, 1011, 4008 and other abnormal closes', () => {
  for (const code of [1001, 1002, 1005, 1006, 1011, 1012, 1013, 1015, 4000, 4008, 4999]) {
    assert.equal(closeAction(code, false), 'reconnect', `code ${code}`);
  }
});

test('close codes: stop on 1008, 1009 and a normal 1000', () => {
  assert.equal(closeAction(1008, false), 'stop');
  assert.equal(closeAction(1009, false), 'stop');
  assert.equal(closeAction(1000, false), 'stop');
});

test('close codes: 4001 asks for a new token', () => {
  assert.equal(closeAction(4001, false), 'refresh_token');
});

test('close codes: a close the application asked for always stops', () => {
  for (const code of [1000, 1001, 1006, 4001, 4008]) assert.equal(closeAction(code, true), 'stop');
});
