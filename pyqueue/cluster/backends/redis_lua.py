"""Server-side scripts of the Redis store (Lua, one per atomic operation)."""

# Every script starts with the same ARGV head: the key base P (the prefix as a
# hash tag, ``{prefix}``: every key of the store is in its slot), the policy, now, the
# coordinator's owner id, and the range (FROM, TO] of the finished stream P:fins
# that the store handed out since the last script (drain_finished answered from
# what it knew the stream held, TO '' for none): those ids are marked drained
# first, so that every reader of P:exp, a script, sees them drained.  A script
# run by an owner whose liveness key P:co:OWNER is gone fails with PQFENCED and
# changes nothing: the others may have recovered its leases already.
# Its body runs as main(); the counters it changed are written after it, and
# it replies {main's reply, events, pushed, xid}: events are what the store's
# telemetry counts, pushed the ids it added to P:fins (tasks that ended), in
# order, and xid the stream id of its last entry (false: none).
PRELUDE = r"""
local P = ARGV[1]
local MAXLOST = tonumber(ARGV[2])
local MAXATT = tonumber(ARGV[3])
local RTTL = tonumber(ARGV[4])
local DTTL = tonumber(ARGV[5])
local BCAP = tonumber(ARGV[6])
local MAXDEAD = tonumber(ARGV[7])
local NOW = tonumber(ARGV[8])
local OWNER = ARGV[9]
local FROM = ARGV[10]
local TO = ARGV[11]
local A = 12
-- KEYS[1] is P:co:OWNER, declared so that a Redis Cluster client routes the
-- call to the one slot every key of the store hashes to (P is a hash tag)
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('PQFENCED coordinator ' .. OWNER .. ' is not registered in ' .. P)
end
local function tk(id) return P .. ':t:' .. id end
local function qk(q, what) return P .. ':q:' .. q .. ':' .. what end
local function fmt(x) return string.format('%.17g', x) end
local NOWS = fmt(NOW)  -- formatted once: a Lua number to text costs a printf
local EXPR = fmt(NOW + RTTL)  -- a finished task's expiry without a ttl of its own
local EXPD = fmt(NOW + DTTL)  -- a dead task's
local function score(pri, seq) return fmt(-pri * 4294967296 + seq) end
local unpack = unpack
-- one command over a list of arguments, in chunks (Lua's unpack has a limit;
-- chunks are even, so pairs stay whole); returns the sum of the integer replies
local function bulk(cmd, key, items)
  local n, i, sum = #items, 1, 0
  while i <= n do
    local j = math.min(n, i + 3999)
    local got = redis.call(cmd, key, unpack(items, i, j))
    if type(got) == 'number' then sum = sum + got end
    i = j + 1
  end
  return sum
end
-- ids that ended in this script, in order: added to P:fins by flush()
local FIN = {}
local PUSHED = {}
local XID = false
-- counter changes add up here and are written once, at the end of the script:
-- C[queue][state + 1] changes that queue's count of tasks in the state (and
-- P:cnt, the totals, by the sum over queues); V[verdict] counts verdicts
local C = {}
local V = {}
-- a state read from a hash is text, one a script sets a number: NUM[st] or st
local NUM = {['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6}
local function count(q, st, n)
  local c = C[q]
  if not c then c = {0, 0, 0, 0, 0, 0, 0}; C[q] = c end
  local j = (NUM[st] or st) + 1
  c[j] = c[j] + n
end
-- telemetry for the store's Python side: E holds (kind, queue, value) triples
-- of what it observes one value at a time (w: a lease's wait in whole
-- microseconds, r: a run time as its node sent it, both as Redis replies
-- keep them: it truncates a Lua float); N[queue] counts new tasks and
-- F[queue][state + 1] finished ones, sent as ('n', queue, n) and
-- ('f' .. state, queue, n) when counters are written
local E = {}
local function event(kind, q, v)
  E[#E + 1] = kind
  E[#E + 1] = q
  E[#E + 1] = v
end
local N = {}
local F = {}
local function flush()
  local tot = {0, 0, 0, 0, 0, 0, 0}
  for q, c in pairs(C) do
    for j = 1, 7 do
      if c[j] ~= 0 then
        redis.call('HINCRBY', qk(q, 'cnt'), j - 1, c[j])
        tot[j] = tot[j] + c[j]
      end
    end
  end
  for j = 1, 7 do
    if tot[j] ~= 0 then redis.call('HINCRBY', P .. ':cnt', j - 1, tot[j]) end
  end
  for v, n in pairs(V) do redis.call('HINCRBY', P .. ':verd', v, n) end
  for q, n in pairs(N) do event('n', q, n) end
  for q, f in pairs(F) do
    for j = 1, 7 do
      if f[j] > 0 then event('f' .. (j - 1), q, f[j]) end
    end
  end
  C, V, N, F = {}, {}, {}, {}
  if #FIN > 0 then
    local f = {}
    for _, id in ipairs(FIN) do
      f[#f + 1] = 'i'
      f[#f + 1] = id
      PUSHED[#PUSHED + 1] = id
    end
    local n, i = #f, 1
    while i <= n do
      local j = math.min(n, i + 3999)
      XID = redis.call('XADD', P .. ':fins', 'MAXLEN', '~', 1000000, '*', unpack(f, i, j))
      i = j + 1
    end
    FIN = {}
  end
end
local function recount(q, old, new)
  count(q, old, -1)
  count(q, new, 1)
end
local function setstate(id, q, old, new)
  recount(q, old, new)
  redis.call('HSET', tk(id), 'st', new)
end
local function wait(id)
  local t = redis.call('HMGET', tk(id), 'q', 'pri', 'seq', 'rdy')
  redis.call('ZADD', qk(t[1], 'ready'), score(tonumber(t[2]), tonumber(t[3])), id)
  redis.call('ZADD', qk(t[1], 'since'), t[4], id)
end
-- a lease leaves its node's set: P:n:NODE (leased here) or P:a:NODE (adopted
-- from another coordinator, not counted against the node's new capacity)
local function unlease(node, id)
  local key = P .. ':n:' .. node
  local s = redis.call('HGET', key, id)
  if not s then
    key = P .. ':a:' .. node
    s = redis.call('HGET', key, id)
  end
  if s then
    redis.call('HDEL', key, id)
    if s == '1' then redis.call('HINCRBY', P .. ':sus', node, -1) end
  end
end
-- every lease a node holds: {id, flag, id, flag...} of both of its sets
local function held_by(node)
  local flat = redis.call('HGETALL', P .. ':n:' .. node)
  for _, x in ipairs(redis.call('HGETALL', P .. ':a:' .. node)) do flat[#flat + 1] = x end
  return flat
end
-- a node leaves the store's books (its lease sets, suspect count, name)
local function drop_node(node)
  redis.call('DEL', P .. ':n:' .. node, P .. ':a:' .. node)
  redis.call('HDEL', P .. ':sus', node)
  redis.call('HDEL', P .. ':nn', node)
  redis.call('SREM', P .. ':nodes', node)
end
-- the end of a task whose state (st), queue and ttl field the caller read
local function ended(id, st, q, ttl, state, result, err)
  local key = tk(id)
  if st == '1' then
    redis.call('ZREM', qk(q, 'ready'), id)
    redis.call('ZREM', qk(q, 'since'), id)
  end
  if st == '0' then redis.call('ZREM', P .. ':sched', id) end
  recount(q, st, state)
  local f = F[q]
  if not f then f = {0, 0, 0, 0, 0, 0, 0}; F[q] = f end
  f[state + 1] = f[state + 1] + 1
  local exp = EXPR
  if state == 5 then exp = EXPD elseif ttl then exp = fmt(NOW + tonumber(ttl)) end
  local set = {'st', state, 'end', NOWS, 'exp', exp, 'node', ''}
  if result then set[#set + 1] = 'res'; set[#set + 1] = result end
  if err then set[#set + 1] = 'err'; set[#set + 1] = err end
  if state == 5 then
    redis.call('ZADD', P .. ':dead', redis.call('INCR', P .. ':deadctr'), id)
  else
    -- emptied in the same HSET, not by an HDEL: a command less per task.  A
    -- task ends from a live state, so it has no res or err to delete (only
    -- this function sets them; REQUEUE_DEAD deletes them)
    set[#set + 1] = 'pl'
    set[#set + 1] = ''
  end
  redis.call('HSET', key, unpack(set))
  FIN[#FIN + 1] = id
end
local function finish(id, state, result, err)
  local t = redis.call('HMGET', tk(id), 'st', 'q', 'ttl')
  ended(id, t[1], t[2], t[3], state, result, err)
end
local function requeue(id)
  local t = redis.call('HMGET', tk(id), 'st', 'q')
  setstate(id, t[2], t[1], 1)
  redis.call('HSET', tk(id), 'node', '')
  wait(id)
end
local function charge_loss(id, why)
  local lost = redis.call('HINCRBY', tk(id), 'lost', 1)
  if lost >= MAXLOST then
    finish(id, 5, false, why .. ' ' .. lost .. ' times')
  else
    requeue(id)
  end
end
local function leased_to(id, node, token)
  local t = redis.call('HMGET', tk(id), 'st', 'node', 'att')
  return t[1] == '2' and t[2] == node and tonumber(t[3]) == token
end
-- 1 or 0 per id argument, as f says
local function each_id(f)
  local out = {}
  for i = A, #ARGV do
    if f(ARGV[i]) then out[#out + 1] = 1 else out[#out + 1] = 0 end
  end
  return out
end
-- drained finished tasks count for retention from now on (one ZADD for all)
local function drained(ids)
  local z = {}
  for _, id in ipairs(ids) do
    local e = redis.call('HGET', tk(id), 'exp')
    if e and tonumber(e) ~= 0 then z[#z + 1] = e; z[#z + 1] = id end
  end
  bulk('ZADD', P .. ':exp', z)
end
-- the ids in XRANGE entries of P:fins (each entry: i, id, i, id...)
local function fin_ids(entries)
  local ids = {}
  for _, e in ipairs(entries) do
    local f = e[2]
    for j = 2, #f, 2 do ids[#ids + 1] = f[j] end
  end
  return ids
end
-- P:fins keeps what some registered coordinator has not read yet, and a few
-- entries more: '~' trims whole stream nodes only, which is most often nothing
-- to do (an exact trim cost ~7 us a script)
local function trim_fins()
  local lo, lo_ms, lo_sq = nil, 0, 0
  for _, c in ipairs(redis.call('HVALS', P .. ':cur')) do
    local a, b = string.match(c, '^(%d+)-(%d+)$')
    local ms, sq = tonumber(a), tonumber(b)
    if ms and (not lo or ms < lo_ms or (ms == lo_ms and sq < lo_sq)) then
      lo, lo_ms, lo_sq = c, ms, sq
    end
  end
  if lo then redis.call('XTRIM', P .. ':fins', 'MINID', '~', lo) end
end
local function forget(id)
  local t = redis.call('HMGET', tk(id), 'st', 'q')
  if t[1] then count(t[2], t[1], -1) end  -- nothing to count for a hash gone already
  redis.call('DEL', tk(id))
  redis.call('ZREM', P .. ':exp', id)
  redis.call('ZREM', P .. ':dead', id)
  redis.call('INCR', P .. ':purged')
end
if TO ~= '' then
  drained(fin_ids(redis.call('XRANGE', P .. ':fins', '(' .. FROM, TO)))
  redis.call('HSET', P .. ':cur', OWNER, TO)
  trim_fins()
end
"""

# ARGV: [schedule id, old, new] (compare-and-set of a fired schedule, '' for
# none), then the tasks as one msgpack array of rows: id, payload, retries,
# backoff (text, nil without retries), not before (a number), result ttl
# (text, '' none), queue, priority.  One blob, not 8 arguments a task:
# redis-py's packing of each argument cost the coordinator more than the
# script.  Returns each task's state, or false when the schedule changed
# meanwhile (another coordinator fired it).  A new task's hash
# holds only what is not a default (see the module doc of the store); its
# queue's sets get one ZADD per call, not per task.
SUBMIT = r"""
local sid = ARGV[A]
if sid ~= '' then
  local cur = redis.call('HGET', P .. ':sch', sid)
  if cur ~= ARGV[A + 1] then return false end
  redis.call('HSET', P .. ':sch', sid, ARGV[A + 2])
end
-- first which ids are new (P:seq then moves once for all of them)
local out = {}
local seen = {}  -- id -> true once found new: a repeat in the same call is not
local new = {}  -- the row of each new task
local fill = {}  -- out index -> id, for the new ones and their repeats
local rows = cmsgpack.unpack(ARGV[A + 3])
local keys = {}
for i, row in ipairs(rows) do keys[i] = tk(row[1]) end
-- one EXISTS for the batch: when none of its tasks is known (the common
-- case), no task needs a read of its own
local known = 0
for i = 1, #keys, 4000 do
  known = known + redis.call('EXISTS', unpack(keys, i, math.min(#keys, i + 3999)))
end
for i, row in ipairs(rows) do
  local id = row[1]
  local st = nil
  if known > 0 and not seen[id] then st = redis.call('HGET', keys[i], 'st') end
  if st then
    out[#out + 1] = tonumber(st)
  else
    if not seen[id] then seen[id] = true; row.key = keys[i]; new[#new + 1] = row end
    out[#out + 1] = false
    fill[#out] = id
  end
end
if #new == 0 then return out end
local seq = redis.call('INCRBY', P .. ':seq', #new) - #new
local byq = {}  -- queue -> {ready pairs, since pairs}
local names = {}
local sched = {}
local states = {}  -- id -> state
for _, row in ipairs(new) do
  local id = row[1]
  seq = seq + 1
  local nb = row[5]
  local q = row[7]
  local pri = row[8]
  local state = 1
  local rdy = NOWS
  if nb > NOW then state = 0; rdy = fmt(nb) end
  states[id] = state
  local f = {'st', state, 'seq', seq, 'pl', row[2], 'q', q, 'pri', pri, 'rdy', rdy,
    'cre', NOWS}
  if row[3] ~= 0 then
    f[#f + 1] = 'ret'; f[#f + 1] = row[3]; f[#f + 1] = 'bo'; f[#f + 1] = row[4]
  end
  if state == 0 then f[#f + 1] = 'nb'; f[#f + 1] = rdy end
  if row[6] ~= '' then f[#f + 1] = 'ttl'; f[#f + 1] = row[6] end
  redis.call('HSET', row.key, unpack(f))
  count(q, state, 1)
  N[q] = (N[q] or 0) + 1
  local b = byq[q]
  if not b then b = {{}, {}}; byq[q] = b; names[#names + 1] = q end
  if state == 0 then
    sched[#sched + 1] = rdy
    sched[#sched + 1] = id
  else
    local r, s = b[1], b[2]
    r[#r + 1] = score(pri, seq)
    r[#r + 1] = id
    s[#s + 1] = rdy
    s[#s + 1] = id
  end
end
for n, id in pairs(fill) do out[n] = states[id] end
for _, q in ipairs(names) do
  redis.call('SADD', P .. ':queues', q)
  bulk('ZADD', qk(q, 'ready'), byq[q][1])
  bulk('ZADD', qk(q, 'since'), byq[q][2])
end
bulk('ZADD', P .. ':sched', sched)
return out
"""

# ARGV: the demands as one msgpack array (see SUBMIT for why), a row per node:
# node, capacity, strict (0|1), seed, {name, weight, name, weight...}.
# Returns {grants, empty}: per node with grants: node, held, k, then
# k * (id, token, payload); and the served queues whose ready set is empty now.
# Each queue's settings are read once per call and its ready set in chunks
# (ZRANGE with scores); what was leased leaves the sets in one ZREM each at
# the end, so a task costs one HMGET and one HSET here.
LEASE = r"""
local res = {}
local x = 1
local function rand()
  x = (x * 16807) % 2147483647
  return (x - 1) / 2147483646
end
local Q = {}  -- queue name -> what this call knows of it
local order = {}
local function queue(name)
  local q = Q[name]
  if q then return q end
  local s = redis.call('HMGET', qk(name, 'set'), 'paused', 'rate', 'tokens', 'stamp')
  -- ids: the ready set's head as read so far (id, score, id, score...), from
  -- its rank 0; off: the rank of the next unread one; gone: ids leased or
  -- dead-lettered in this call; pos: where the node now served looks next
  q = {key = qk(name, 'ready'), paused = s[1] == '1', rate = tonumber(s[2]), tokens = s[3],
    stamp = s[4], ids = {}, off = 0, full = false, gone = {}, pos = 1, taken = {}, first = 1,
    dry = false}
  Q[name] = q
  order[#order + 1] = name
  return q
end
-- the first task of q that this node has not passed over, or nil
local function head(q, want)
  while true do
    while q.pos <= #q.ids and q.gone[q.ids[q.pos]] do q.pos = q.pos + 2 end
    if q.pos <= #q.ids then return q.ids[q.pos] end
    if q.full then return nil end
    local got = redis.call('ZRANGE', q.key, q.off, q.off + want - 1, 'WITHSCORES')
    for _, v in ipairs(got) do q.ids[#q.ids + 1] = v end
    q.off = q.off + #got / 2
    if #got < 2 * want then q.full = true end
  end
end
local function can_grant(name, want)
  local q = queue(name)
  if q.paused then return nil end
  local id = head(q, want)
  if not id then return nil end
  if q.rate and not q.refilled then
    q.refilled = true
    local cap = math.max(1.0, q.rate / 20.0)
    q.tokens = math.min(cap, tonumber(q.tokens) + math.max(0.0, NOW - tonumber(q.stamp)) * q.rate)
  end
  if q.rate and q.tokens < 1.0 then return nil end
  return id
end
-- whether q, as this call has seen it, has nothing left to grant to any node:
-- paused, out of tokens, or its ready set read to the end and all taken.  It
-- stays so for the rest of the call (nothing here adds tasks or tokens).
local function dry(name)
  local q = Q[name]
  if not q then return false end  -- not read yet
  if q.dry then return true end
  if q.paused or (q.refilled and q.tokens < 1.0) then q.dry = true; return true end
  if not q.full then return false end
  while q.first <= #q.ids and q.gone[q.ids[q.first]] do q.first = q.first + 2 end
  q.dry = q.first > #q.ids
  return q.dry
end
local empty = {}
for _, row in ipairs(cmsgpack.unpack(ARGV[A])) do
  local node = row[1]
  local cap = row[2]
  local strict = row[3] == 1
  x = row[4]
  local served = {}
  local open = false  -- some served queue may still have a task for this node
  local qs = row[5]
  for j = 1, #qs, 2 do
    -- a queue with no keys yet reads as not paused, without limit, empty
    served[#served + 1] = {qs[j], qs[j + 1]}
    if not open and not dry(qs[j]) then open = true end
  end
  local nkey = P .. ':n:' .. node
  local held = 0
  local n = 0
  -- a node whose queues all ran dry in this call costs no read: it gets nothing
  if open then
    held = redis.call('HLEN', nkey)
    n = cap - held
  end
  local out = {}
  local k = 0
  if n > 0 then
    local sus0 = nil  -- the node's suspect leases, read at its first suspect task
    local sus = nil
    local slots = {}  -- nkey's new fields: id, suspect flag...
    for _, qw in ipairs(served) do queue(qw[1]).pos = 1 end
    while k < n do
      local name, id
      if #served == 1 then
        name = served[1][1]
        id = can_grant(name, n - k)
      else
        local elig = {}
        local heads = {}
        local total = 0
        for _, qw in ipairs(served) do
          local h = can_grant(qw[1], n - k)
          if h then elig[#elig + 1] = qw; heads[qw[1]] = h; total = total + qw[2] end
        end
        if #elig == 0 then break end
        local pick = elig[#elig]
        if #elig == 1 then
          pick = elig[1]
        elseif strict then
          pick = elig[1]
          for _, qw in ipairs(elig) do if qw[2] > pick[2] then pick = qw end end
        else
          local r = rand() * total
          for _, qw in ipairs(elig) do
            r = r - qw[2]
            if r < 0 then pick = qw; break end
          end
        end
        name = pick[1]
        id = heads[name]
      end
      if not id then break end
      local q = Q[name]
      q.pos = q.pos + 2  -- this node is past it, whatever comes of it
      local key = tk(id)
      local t = redis.call('HMGET', key, 'lost', 'att', 'base', 'pl', 'rdy', 'ttl')
      local suspect = tonumber(t[1] or 0) > 0
      local att = tonumber(t[2] or 0)
      if suspect and not sus then
        sus0 = tonumber(redis.call('HGET', P .. ':sus', node) or '0')
        sus = sus0
      end
      if suspect and sus > 0 then
        -- passed over for this node: it keeps its place for the next one
      elseif att - tonumber(t[3] or 0) >= MAXATT then
        q.gone[id] = true
        ended(id, '1', name, t[6], 5, false, 'hard cap of ' .. MAXATT .. ' attempts reached')
        q.off = q.off - 1  -- ended took it out of the ready set: ranks moved up
      else
        q.gone[id] = true
        q.taken[#q.taken + 1] = id
        if q.rate then q.tokens = q.tokens - 1 end
        local flag = '0'
        if suspect then sus = sus + 1; flag = '1' end
        att = att + 1
        recount(name, '1', 2)
        redis.call('HSET', key, 'st', 2, 'att', att, 'node', node, 'sta', NOWS)
        slots[#slots + 1] = id
        slots[#slots + 1] = flag
        k = k + 1
        out[#out + 1] = id
        out[#out + 1] = att
        out[#out + 1] = t[4]
        event('w', name, math.floor(math.max(0.0, NOW - tonumber(t[5])) * 1e6 + 0.5))
      end
    end
    if sus ~= sus0 then redis.call('HSET', P .. ':sus', node, sus) end
    if #slots > 0 then
      redis.call('SADD', P .. ':nodes', node)
      held = held + bulk('HSET', nkey, slots)
    end
  end
  if k > 0 then
    res[#res + 1] = node
    res[#res + 1] = held
    res[#res + 1] = k
    for _, v in ipairs(out) do res[#res + 1] = v end
  end
end
for _, name in ipairs(order) do
  local q = Q[name]
  if #q.taken > 0 then
    bulk('ZREM', q.key, q.taken)
    bulk('ZREM', qk(name, 'since'), q.taken)
  end
  if q.refilled then
    redis.call('HSET', qk(name, 'set'), 'tokens', fmt(q.tokens), 'stamp', NOWS)
  end
end
for _, name in ipairs(order) do
  local q = Q[name]
  if q.full and not q.paused then
    local left = false
    for j = 1, #q.ids, 2 do if not q.gone[q.ids[j]] then left = true; break end end
    if not left then empty[name] = true end
  end
end
local names = {}
for name in pairs(empty) do names[#names + 1] = name end
return {res, names}
"""

# ARGV: the rows as one msgpack array (see SUBMIT for why), each: id, token,
# kind (ok|cancel|fail), value (nil: none), error (nil: none), jitter, run
# seconds as text ('' not reported).  Returns {verdicts, states}: each row's
# verdict, and the state an accepted row left its task in (-1 for the others).
COMPLETE = r"""
local out = {}
local states = {}
local freed = {}  -- node -> ids whose lease ended here (one HDEL per node)
local nodes = {}
local suspects = {}  -- node -> how many of those were suspect (lost > 0 when leased)
for _, row in ipairs(cmsgpack.unpack(ARGV[A])) do
  local id = row[1]
  local tok = row[2]
  local kind = row[3]
  local val = row[4] or false  -- msgpack nil is a Lua nil
  local err = row[5] or false
  local key = tk(id)
  local t = redis.call('HMGET', key, 'st', 'att', 'node', 'ret', 'bo', 'q', 'ttl', 'lost')
  local v
  local new = -1
  if not t[1] then
    v = 'unknown'
  else
    local st = tonumber(t[1])
    local att = tonumber(t[2] or 0)
    if st == 2 and att == tok then
      -- the node's slot (its flag is '1' when the task had been lost
      -- before this lease: lost only grows when a lease ends)
      local f = freed[t[3]]
      if not f then f = {}; freed[t[3]] = f; nodes[#nodes + 1] = t[3]; suspects[t[3]] = 0 end
      f[#f + 1] = id
      if tonumber(t[8] or 0) > 0 then suspects[t[3]] = suspects[t[3]] + 1 end
    end
    if st >= 3 then v = 'duplicate'
    elseif st == 0 then if att == tok then v = 'duplicate' else v = 'stale' end
    elseif att ~= tok then v = 'stale'
    else v = 'accepted' end
    if v == 'accepted' then
      if row[7] ~= '' then event('r', t[6], row[7]) end
      if kind == 'cancel' then
        new = 6
        ended(id, t[1], t[6], t[7], 6, false, 'cancelled while running')
      elseif kind == 'ok' then
        new = 3
        ended(id, t[1], t[6], t[7], 3, val, false)
      else
        local fails = redis.call('HINCRBY', key, 'fail', 1)
        if fails > tonumber(t[4] or 0) then
          new = 4
          ended(id, t[1], t[6], t[7], 4, val, err)
        else
          new = 0
          local delay = math.min(BCAP, tonumber(t[5] or 1) * 2.0 ^ (fails - 1))
            * row[6]
          if t[1] == '1' then
            redis.call('ZREM', qk(t[6], 'ready'), id)
            redis.call('ZREM', qk(t[6], 'since'), id)
          end
          recount(t[6], t[1], 0)
          redis.call('HSET', key, 'st', 0, 'node', '', 'nb', fmt(NOW + delay))
          redis.call('ZADD', P .. ':sched', fmt(NOW + delay), id)
        end
      end
    end
  end
  V[v] = (V[v] or 0) + 1
  out[#out + 1] = v
  states[#states + 1] = new
end
for _, node in ipairs(nodes) do
  local ids = freed[node]
  if bulk('HDEL', P .. ':n:' .. node, ids) < #ids then bulk('HDEL', P .. ':a:' .. node, ids) end
  if suspects[node] > 0 then redis.call('HINCRBY', P .. ':sus', node, -suspects[node]) end
end
return {out, states}
"""

# ARGV: node, then (id, token, started) per row.
RELEASE = r"""
local node = ARGV[A]
local out = {}
local i = A + 1
while i <= #ARGV do
  local id = ARGV[i]
  if leased_to(id, node, tonumber(ARGV[i + 1])) then
    unlease(node, id)
    if ARGV[i + 2] == '1' then charge_loss(id, 'its node stopped under it') else requeue(id) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  i = i + 3
end
return out
"""

REVOKED = r"""
local node, id = ARGV[A], ARGV[A + 1]
if not leased_to(id, node, tonumber(ARGV[A + 2])) then return 0 end
unlease(node, id)
finish(id, 6, false, 'cancelled before it started')
return 1
"""

NODE_LOST = r"""
local node = ARGV[A]
local flat = held_by(node)
drop_node(node)
local out = {}
for j = 1, #flat, 2 do
  local id = flat[j]
  local t = redis.call('HMGET', tk(id), 'st', 'node')
  if t[1] == '2' and t[2] == node then
    out[#out + 1] = id
    charge_loss(id, 'its node died under it')
  end
end
return out
"""

CANCEL = r"""
return each_id(function(id)
  local st = redis.call('HGET', tk(id), 'st')
  if st ~= '0' and st ~= '1' then return false end
  finish(id, 6, false, 'cancelled')
  return true
end)
"""

REQUEUE_DEAD = r"""
return each_id(function(id)
  local key = tk(id)
  local t = redis.call('HMGET', key, 'st', 'att', 'pl')
  if t[1] ~= '5' or not t[3] then return false end
  redis.call('HSET', key, 'lost', 0, 'fail', 0, 'base', t[2] or 0, 'end', 0, 'exp', 0,
    'rdy', NOWS)
  redis.call('HDEL', key, 'err', 'res')
  redis.call('ZREM', P .. ':dead', id)
  redis.call('ZREM', P .. ':exp', id)
  requeue(id)
  return true
end)
"""

# Operator deletion of dead-lettered tasks, counted as purged.  A death not in
# P:exp yet was not drained by any coordinator: its clients have not been told.
DELETE_DEAD = r"""
return each_id(function(id)
  if redis.call('HGET', tk(id), 'st') ~= '5' then return false end
  if not redis.call('ZSCORE', P .. ':exp', id) then return false end
  forget(id)
  return true
end)
"""

# ARGV: the stream id read up to (exclusive), how many entries at most.
# Returns {ids, the new cursor}: this coordinator's read of P:fins, whoever ended them.
DRAIN = r"""
local got = redis.call('XRANGE', P .. ':fins', '(' .. ARGV[A], '+', 'COUNT', ARGV[A + 1])
if #got == 0 then return {{}, ARGV[A]} end
local ids = fin_ids(got)
local cur = got[#got][1]
drained(ids)
redis.call('HSET', P .. ':cur', OWNER, cur)
trim_fins()
return {ids, cur}
"""

# Returns {how many, not_before of the earliest SCHEDULED task left or false}.
PROMOTE = r"""
local ids = redis.call('ZRANGEBYSCORE', P .. ':sched', '-inf', ARGV[8])
for _, id in ipairs(ids) do
  redis.call('ZREM', P .. ':sched', id)
  redis.call('HSET', tk(id), 'rdy', redis.call('HGET', tk(id), 'nb'))
  requeue(id)
end
local head = redis.call('ZRANGE', P .. ':sched', 0, 0, 'WITHSCORES')
return {#ids, head[2] or false}
"""

# ARGV: limit.
EXPIRE = r"""
local limit = tonumber(ARGV[A])
local gone = 0
local ids = redis.call('ZRANGEBYSCORE', P .. ':exp', '-inf', ARGV[8], 'LIMIT', 0, limit)
for _, id in ipairs(ids) do forget(id); gone = gone + 1 end
flush()
local over = tonumber(redis.call('HGET', P .. ':cnt', 5) or '0') - MAXDEAD
while over > 0 and gone < limit do
  local head = redis.call('ZRANGE', P .. ':dead', 0, 0)
  if #head == 0 then break end
  if not redis.call('ZSCORE', P .. ':exp', head[1]) then break end  -- not drained
  forget(head[1])
  gone = gone + 1
  over = over - 1
end
return gone
"""

# ARGV: finished_before ('' none), dead (0|1), limit.
PURGE = r"""
local fb = ARGV[A]
local dead = ARGV[A + 1] == '1'
local limit = tonumber(ARGV[A + 2])
local gone = 0
local ids = redis.call('ZRANGE', P .. ':exp', 0, -1)
for _, id in ipairs(ids) do
  if gone >= limit then break end
  local t = redis.call('HMGET', tk(id), 'st', 'end')
  local st = tonumber(t[1])
  if (dead and st == 5) or (fb ~= '' and (st == 3 or st == 4 or st == 6)
      and tonumber(t[2]) < tonumber(fb)) then
    forget(id)
    gone = gone + 1
  end
end
return gone
"""

# ARGV: name, rate ('' none), tokens, paused.
CONFIGURE = r"""
local name = ARGV[A]
local key = qk(name, 'set')
local old = redis.call('HGET', key, 'rate') or ''
if old ~= ARGV[A + 1] then
  if ARGV[A + 1] == '' then
    redis.call('HDEL', key, 'rate')
  else
    redis.call('HSET', key, 'rate', ARGV[A + 1])
  end
  redis.call('HSET', key, 'tokens', ARGV[A + 2], 'stamp', ARGV[8])
end
redis.call('HSET', key, 'paused', ARGV[A + 3])
redis.call('SADD', P .. ':queues', name)
return 1
"""

# ARGV: queue name.  When its longest-waiting PENDING task became ready.
OLDEST = r"""
local got = redis.call('ZRANGE', qk(ARGV[A], 'since'), 0, 0, 'WITHSCORES')
if #got == 0 then return false end
return got[2]
"""

# ARGV: liveness in ms.  Refreshes this coordinator's key, acknowledges every
# other live one (it knows they write: see "Several coordinators" in the store's
# doc) and returns {live others, dead registered ones, live others that have not
# acknowledged this one yet}.
KEEPALIVE = r"""
redis.call('SET', P .. ':co:' .. OWNER, 1, 'PX', ARGV[A])
local others, dead, waiting = {}, {}, {}
for _, o in ipairs(redis.call('SMEMBERS', P .. ':coords')) do
  if o ~= OWNER then
    if redis.call('EXISTS', P .. ':co:' .. o) == 1 then
      others[#others + 1] = o
      redis.call('SADD', P .. ':ack:' .. o, OWNER)
      if redis.call('SISMEMBER', P .. ':ack:' .. OWNER, o) == 0 then waiting[#waiting + 1] = o end
    else
      dead[#dead + 1] = o
    end
  end
end
return {others, dead, waiting}
"""

# The leases held through coordinators whose liveness key is gone (and of nodes
# of no registered owner: a store written before owners existed) go back to
# their queues at their old positions without a loss (the coordinator died,
# not the task); those owners are unregistered.  Returns {owner, count...}.
RECOVER_DEAD = r"""
local live = {}
local function alive(o)
  local v = live[o]
  if v == nil then
    v = o ~= '' and redis.call('EXISTS', P .. ':co:' .. o) == 1
    live[o] = v
  end
  return v
end
local counts, order = {}, {}
local function tally(o, n)
  if not counts[o] then counts[o] = 0; order[#order + 1] = o end
  counts[o] = counts[o] + n
end
for _, node in ipairs(redis.call('SMEMBERS', P .. ':nodes')) do
  local o = string.match(node, '^([^/]*)/') or ''
  if not alive(o) then
    local flat = held_by(node)
    drop_node(node)
    local n = 0
    for j = 1, #flat, 2 do
      local id = flat[j]
      local t = redis.call('HMGET', tk(id), 'st', 'node')
      if t[1] == '2' and t[2] == node then requeue(id); n = n + 1 end
    end
    tally(o, n)
  end
end
for _, o in ipairs(redis.call('SMEMBERS', P .. ':coords')) do
  if not alive(o) then
    redis.call('SREM', P .. ':coords', o)
    redis.call('HDEL', P .. ':cur', o)
    redis.call('DEL', P .. ':ack:' .. o, P .. ':ad:' .. o)
    tally(o, 0)
  end
end
local out = {}
for _, o in ipairs(order) do out[#out + 1] = o; out[#out + 1] = counts[o] end
return out
"""

# A node that authenticated as NAME joined through this coordinator as ARGV[A]
# (its qualified id): it takes over (adopts) the leases that a node of that name
# holds through other coordinators, since it still runs them and resends their
# results (see pyqueue.cluster.node).  Each adoption is noted in P:ad:OWNER by
# time (EXPIRE_ADOPTED).  Returns how many.  ARGV: node, name.
ADOPT = r"""
local me, name = ARGV[A], ARGV[A + 1]
redis.call('HSET', P .. ':nn', me, name)
redis.call('SADD', P .. ':nodes', me)
local mine = OWNER .. '/'
local akey = P .. ':a:' .. me
local n, sus = 0, 0
for _, other in ipairs(redis.call('SMEMBERS', P .. ':nodes')) do
  if other ~= me and string.sub(other, 1, #mine) ~= mine
      and redis.call('HGET', P .. ':nn', other) == name then
    local flat = held_by(other)
    drop_node(other)
    for j = 1, #flat, 2 do
      local id, flag = flat[j], flat[j + 1]
      local t = redis.call('HMGET', tk(id), 'st', 'node')
      if t[1] == '2' and t[2] == other then
        redis.call('HSET', tk(id), 'node', me)
        redis.call('HSET', akey, id, flag)
        redis.call('ZADD', P .. ':ad:' .. OWNER, NOWS, id)
        n = n + 1
        if flag == '1' then sus = sus + 1 end
      end
    end
  end
end
if sus > 0 then redis.call('HINCRBY', P .. ':sus', me, sus) end
return n
"""

# ARGV: cutoff.  The leases this coordinator adopted up to the cutoff and that
# its node still holds go back to their queues without a loss: a lease the dead
# coordinator granted but never sent is held by nobody (a task that really runs
# that long runs twice).  Returns how many.
EXPIRE_ADOPTED = r"""
local key = P .. ':ad:' .. OWNER
local mine = OWNER .. '/'
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[A])) do
  redis.call('ZREM', key, id)
  local t = redis.call('HMGET', tk(id), 'st', 'node')
  if t[1] == '2' and string.sub(t[2], 1, #mine) == mine
      and redis.call('HEXISTS', P .. ':a:' .. t[2], id) == 1 then
    unlease(t[2], id)
    requeue(id)
    n = n + 1
  end
end
return n
"""

# After RECOVER_DEAD, when a coordinator opens the store: alone (no other live
# coordinator), this is a restart: the completion counters restart and every
# finished id not read yet counts as drained (its clients WAIT again).  Either
# way, this coordinator reads P:fins from its end, and what expired while
# nobody ran is purged.  Returns {cursor, alone}.
OPEN = r"""
local alone = true
for _, o in ipairs(redis.call('SMEMBERS', P .. ':coords')) do
  if o ~= OWNER and redis.call('EXISTS', P .. ':co:' .. o) == 1 then alone = false end
end
if alone then
  redis.call('DEL', P .. ':verd')
  redis.call('SET', P .. ':purged', 0)
  drained(fin_ids(redis.call('XRANGE', P .. ':fins', '-', '+')))
end
local cur = '0-0'
local top = redis.call('XREVRANGE', P .. ':fins', '+', '-', 'COUNT', 1)
if #top > 0 then cur = top[1][1] end
redis.call('HSET', P .. ':cur', OWNER, cur)
if alone then trim_fins() end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':exp', '-inf', ARGV[8])) do forget(id) end
if alone then return {cur, 1} end
return {cur, 0}
"""


def script(body: str) -> str:
    """The full text of one script: the prelude, the body, then the counters, events
    and finished ids."""
    # false, not nil, for no reply: a nil would end the reply table before E
    return (
        PRELUDE
        + "local function main()\n"
        + body
        + "\nend\nlocal r = main()\nflush()\nif r == nil then r = false end\n"
        + "return {r, E, PUSHED, XID}\n"
    )
