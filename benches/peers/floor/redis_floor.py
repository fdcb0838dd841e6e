#!/usr/bin/env python3
"""What the Redis server's CPU allows: server CPU and append-only-file bytes per `flow`.

Why: the Redis engine's `flow` (a claim and a completion, each a function call) is compared with
the naive two-command client (`SET NX GET`, then `SET XX`). On a machine where the server's CPU
is what runs out, the figure that decides throughput at many clients is the server's CPU per
flow, which this script measures from `INFO cpu`, so that a change to the scripts can be judged
before it is built into the engine, and so that the floor of what scripts can cost is known.

It starts its own `redis-server` (`appendfsync always`, no rewrites, as `run.sh` does) in a
temporary directory, stops it on exit, and for each variant, in rounds, makes FLOWS flows in
pipelines of BATCH calls (as the engine's lanes send them under load) and prints the medians:

- `naive`: the peers harness's naive client;
- `engine`: the engine's own functions, read from `src/engine/redis/scripts.rs`, one `FCALL`
  per claim and per completion, with the scope's count (C13) as the engine keeps it;
- `engine-per-slot`: the same functions, called once per pipeline for all its calls (one
  `FCALL` for a slot's batch, each call run under `pcall`), to measure what batching alone saves;
- `packed-per-slot`: a sketch, not the contract: the record as one string (`cmsgpack`), written
  with `SET ... PX`, and the scope's count trimmed, read and updated once per batch. It leaves
  out takeovers, nonces on completion and recovery points; it bounds from below what a
  redesign of the record could reach.
- `lua-floor`: an `FCALL` that only writes one string, and one that returns at once.

Needs Python's `redis` package (`pip install redis`). Usage:

    python3 benches/peers/floor/redis_floor.py [--rounds 3] [--flows 20000] [--batch 64]
    python3 benches/peers/floor/redis_floor.py --check   # only reads the scripts (CI runs it)
"""
import argparse, os, re, shutil, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, '..', '..', '..', 'src', 'engine', 'redis', 'scripts.rs')
FP = 'f' * 64
BODY = b'x' * 300


def const(src, name):
    m = re.search(r'const %s: &str = r#"(.*?)"#;' % name, src, re.S)
    if not m:
        sys.exit('no %s in %s' % (name, SCRIPTS))
    return m.group(1)


def libraries():
    src = open(SCRIPTS).read()
    helpers, claim, complete = const(src, 'HELPERS'), const(src, 'CLAIM'), const(src, 'COMPLETE')
    one = ''.join(
        "redis.register_function('%s', function(KEYS, ARGV)\nlocal r, s = KEYS[1], KEYS[2]\n%send)\n"
        % (n, b) for n, b in (('e_claim', claim), ('e_complete', complete)))
    # Per slot: KEYS = {count, record...}; ARGV = {arguments per call, then each call's}.
    many = ''
    for n, b in (('claim', claim), ('complete', complete)):
        many += "local function %s_one(r, s, ARGV)\n%s\nend\n" % (n, b)
        many += ("redis.register_function('m_%s', function(KEYS, ARGV)\n"
                 "local s, n, out, at = KEYS[1], tonumber(ARGV[1]), {}, 2\n"
                 "for i = 2, #KEYS do\n"
                 "  local a = {}\n  for j = 1, n do a[j] = ARGV[at + j - 1] end\n  at = at + n\n"
                 "  local ok, res = pcall(%s_one, KEYS[i], s, a)\n"
                 "  if ok then out[#out + 1] = res else out[#out + 1] = {'error', tostring(res)} end\n"
                 "end\nreturn out\nend)\n") % (n, n)
    return ("#!lua name=floor_engine\n" + helpers + one + many,
            "#!lua name=floor_packed\n" + helpers + PACKED,
            "#!lua name=floor_lua\n" + LUA_FLOOR)


PACKED = r'''
redis.register_function('p_claim', function(KEYS, ARGV)
  local s, now = KEYS[1], clock(ARGV[1])
  local lease, ttl, grace, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', s, '-inf', now)
  local n, out, z = redis.call('ZCARD', s), {}, {'ZADD', s}
  for i = 2, #KEYS do
    local r, at = KEYS[i], 6 + (i - 2) * 4
    local fp, nonce = ARGV[at], ARGV[at + 1]
    local v, h, res = redis.call('GET', r), {}, nil
    if v then h = {cmsgpack.unpack(v)} end
    if h[1] and live(h[1], h[6], now) then
      if h[2] ~= fp then res = {'conflict'}
      elseif h[1] == 'c' then res = {'replay', h[10], int(h[6]), int(now)}
      elseif h[4] == nonce then res = {'execute', int(h[3]), int(h[5]), '0', ''}
      elseif now < h[5] then res = {'busy'} end
    end
    if not res and n >= cap then res = {'scope_full'} end
    if not res then
      n = n + 1
      local token = math.max((h[3] or 0) + 1, now * 1024)
      local deadline = now + lease
      local expires = math.max(now + ttl, deadline)
      redis.call('SET', r, cmsgpack.pack('f', fp, token, nonce, deadline, expires, '', ARGV[at + 2],
        ARGV[at + 3], '', now), 'PX', expires - now + grace)
      z[#z + 1] = expires; z[#z + 1] = member(r)
      res = {'execute', int(token), int(deadline), '0', ''}
    end
    out[#out + 1] = res
  end
  if #z > 2 then redis.call(unpack(z)) end
  return out
end)
redis.register_function('p_complete', function(KEYS, ARGV)
  local s, now = KEYS[1], clock(ARGV[1])
  local ttl, grace = tonumber(ARGV[2]), tonumber(ARGV[3])
  local out, z = {}, {'ZADD', s}
  for i = 2, #KEYS do
    local r, at = KEYS[i], 4 + (i - 2) * 3
    local token, nonce = tonumber(ARGV[at]), ARGV[at + 1]
    local v = redis.call('GET', r)
    local h = {}
    if v then h = {cmsgpack.unpack(v)} end
    if h[1] ~= 'f' or h[3] ~= token then out[#out + 1] = refuse(h[1], h[3] or 0, token) else
      redis.call('SET', r, cmsgpack.pack('c', h[2], token, nonce, 0, now + ttl, '', h[8], h[9],
        ARGV[at + 2], h[11]), 'PX', ttl + grace)
      z[#z + 1] = now + ttl; z[#z + 1] = member(r)
      out[#out + 1] = {'stored', h[2], int(now + ttl), int(now)}
    end
  end
  if #z > 2 then redis.call(unpack(z)) end
  return out
end)
'''

LUA_FLOOR = r'''
redis.register_function('l_return', function(KEYS, ARGV) return 1 end)
redis.register_function('l_set', function(KEYS, ARGV)
  redis.call('SET', KEYS[1], ARGV[1], 'PX', 86400000) return 1 end)
'''


class Server:
    def __init__(self, binary):
        import redis
        self.dir = tempfile.mkdtemp(prefix='idemstore-floor.')
        self.port = 6395
        self.proc = subprocess.Popen(
            [binary, '--port', str(self.port), '--bind', '127.0.0.1', '--dir', self.dir,
             '--save', '', '--appendonly', 'yes', '--appendfsync', 'always',
             '--auto-aof-rewrite-percentage', '0', '--logfile', os.path.join(self.dir, 'log')])
        self.r = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                self.r.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        self.r.ping()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(r, make_flows):
    """Server CPU (µs) and AOF bytes per flow of `make_flows()`, which returns how many."""
    r.flushall()
    cpu = lambda: (lambda i: i['used_cpu_sys'] + i['used_cpu_user'])(r.info('cpu'))
    aof = lambda: r.info('persistence')['aof_current_size']
    c0, a0 = cpu(), aof()
    n = make_flows()
    return (cpu() - c0) / n * 1e6, (aof() - a0) / n


def claim_args(key):
    return ['', 60000, 86400000, 60000, FP, 'n' + key, 'scope', key, 1000000000]


def check(replies, want):
    for x in replies:
        if x[0] != want:
            sys.exit('unexpected reply %r' % (x,))


def naive(r, flows, batch):
    for k in range(0, flows, batch):
        p = r.pipeline(transaction=False)
        for i in range(batch):
            p.execute_command('SET', 'idem:acct:%d' % (k + i), 'R|' + FP[:62], 'NX', 'PX', 86400000, 'GET')
        p.execute()
        p = r.pipeline(transaction=False)
        for i in range(batch):
            p.execute_command('SET', 'idem:acct:%d' % (k + i), b'C|201|' + BODY, 'XX', 'KEEPTTL')
        p.execute()
    return flows


def engine(r, flows, batch):
    for k in range(0, flows, batch):
        keys = ['r:{sc}%d' % (k + i) for i in range(batch)]
        p = r.pipeline(transaction=False)
        for key in keys:
            p.fcall('e_claim', 2, key, 's:{sc}', *claim_args(key))
        claims = p.execute()
        check(claims, b'execute')
        p = r.pipeline(transaction=False)
        for key, c in zip(keys, claims):
            p.fcall('e_complete', 2, key, 's:{sc}', '', c[1], 1, 86400000, 60000, 'c' + key, BODY,
                    1000000000)
        check(p.execute(), b'stored')
    return flows


def engine_per_slot(r, flows, batch):
    for k in range(0, flows, batch):
        keys = ['r:{sc}%d' % (k + i) for i in range(batch)]
        args = [9] + [a for key in keys for a in claim_args(key)]
        claims = r.fcall('m_claim', len(keys) + 1, 's:{sc}', *keys, *args)
        check(claims, b'execute')
        args = [8] + [a for key, c in zip(keys, claims)
                      for a in ('', c[1], 1, 86400000, 60000, 'c' + key, BODY, 1000000000)]
        check(r.fcall('m_complete', len(keys) + 1, 's:{sc}', *keys, *args), b'stored')
    return flows


def packed_per_slot(r, flows, batch):
    for k in range(0, flows, batch):
        keys = ['r:{sc}%d' % (k + i) for i in range(batch)]
        args = ['', 60000, 86400000, 60000, 1000000000]
        for key in keys:
            args += [FP, 'n' + key, 'scope', key]
        claims = r.fcall('p_claim', len(keys) + 1, 's:{sc}', *keys, *args)
        check(claims, b'execute')
        args = ['', 86400000, 60000]
        for key, c in zip(keys, claims):
            args += [c[1], 'c' + key, BODY]
        check(r.fcall('p_complete', len(keys) + 1, 's:{sc}', *keys, *args), b'stored')
    return flows


def lua_floor(name):
    def run(r, flows, batch):
        for k in range(0, flows, batch):
            p = r.pipeline(transaction=False)
            for i in range(batch):
                p.fcall(name, 1, 'l:%d' % (k + i), FP)
            p.execute()
        return flows
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--flows', type=int, default=20000)
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--server', default=os.environ.get('REDIS_SERVER', 'redis-server'))
    ap.add_argument('--check', action='store_true',
                    help='only build the libraries from the engine\'s scripts')
    a = ap.parse_args()
    if a.check:
        for lib in libraries():
            if 'register_function' not in lib:
                sys.exit('no function in a library')
        print('the scripts of %s were read' % os.path.normpath(SCRIPTS))
        return
    server = Server(a.server)
    try:
        r = server.r
        for lib in libraries():
            r.function_load(lib, replace=True)
        variants = [('naive', naive), ('engine', engine), ('engine-per-slot', engine_per_slot),
                    ('packed-per-slot', packed_per_slot),
                    ('lua-floor: FCALL that returns', lua_floor('l_return')),
                    ('lua-floor: FCALL that SETs', lua_floor('l_set'))]
        seen = {name: [] for name, _ in variants}
        for _ in range(a.rounds):
            for name, run in variants:
                seen[name].append(measure(r, lambda: run(r, a.flows, a.batch)))
        version = r.info('server')['redis_version']
        print('redis %s, %d rounds of %d flows (calls for lua-floor), pipelines of %d; medians'
              % (version, a.rounds, a.flows, a.batch))
        print('| variant | server CPU µs per flow (rounds) | AOF bytes per flow |')
        print('|---|---:|---:|')
        for name, _ in variants:
            cpus = [c for c, _ in seen[name]]
            print('| %s | %.1f (%s) | %.0f |' % (name, statistics.median(cpus),
                  ', '.join('%.1f' % c for c in cpus), statistics.median(b for _, b in seen[name])))
    finally:
        server.stop()


if __name__ == '__main__':
    main()
