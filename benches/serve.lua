-- wrk script for benches/serve.sh: POST /v1/bookings as seed 000 sends it.
-- Mode "new" (default) sends a fresh Idempotency-Key with every request, so every request
-- runs the handler (a first attempt); mode "replay" sends one key, so every request after the
-- first is answered from the store.
local body = '{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}'
local counter = 0
local next_thread = 0

function setup(thread)
   thread:set("tid", next_thread)
   next_thread = next_thread + 1
end

function init(args)
   mode = args[1] or "new"
end

function request()
   counter = counter + 1
   local key = "replay-key"
   if mode == "new" then
      key = string.format("k-%d-%d", tid, counter)
   end
   return wrk.format("POST", "/v1/bookings", {
      ["Host"] = "localhost",
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer tok_bench",
      ["Idempotency-Key"] = key,
   }, body)
end

function done(summary, latency, requests)
   -- In mode "replay", the requests that race the very first one get 409 (in progress) and
   -- count here.
   local errors = summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout
   -- `done` runs outside the threads, so the mode is the shell's label.
   io.write(string.format("RESULT requests=%d non2xx_or_errors=%d req_per_s=%.0f p50_us=%d p99_us=%d\n",
      summary.requests, errors, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99)))
end
