"""The review store's state changes, each one Lua script (atomic in Redis): add, claim, expire claims, and
decide / undo / roll back on a version. Keys are built from the prefix in ``ARGV[1]`` (as labelq.jobs does)."""

from __future__ import annotations

COMMON = """
local P = ARGV[1]
local function ix(bucket, facet, sort) return P .. 'ix:' .. bucket .. ':' .. facet .. ':' .. sort end
local function move(ik, id, to)
  local cur = redis.call('HMGET', ik, 'bucket', 'facet', 'seq', 'skey')
  local facet, seq, skey = cur[2], cur[3], cur[4]
  if cur[1] then
    redis.call('ZREM', ix(cur[1], facet, 'age'), id)
    redis.call('ZREM', ix(cur[1], facet, 'score'), id)
  end
  redis.call('ZADD', ix(to, facet, 'age'), seq, id)
  redis.call('ZADD', ix(to, facet, 'score'), skey, id)
  redis.call('SADD', P .. 'buckets', to)
  redis.call('HSET', ik, 'bucket', to)
end
local function log(ik, entry) redis.call('RPUSH', ik .. ':log', entry) end
local function snapshot(ik) return redis.call('HGETALL', ik) end
"""

# ARGV: prefix, id, now, action, quarantine_uri, moved, facet, facet_json, log_json, then field/value pairs
ADD = COMMON + """
local id, now, action, quri, moved = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ik = P .. 'item:' .. id
if redis.call('EXISTS', ik) == 0 then
  local seq = redis.call('INCR', P .. 'seq')
  local score = 0
  local fields = {}
  for i = 10, #ARGV, 2 do
    fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = ARGV[i + 1]
    if ARGV[i] == 'score' then score = tonumber(ARGV[i + 1]) end
  end
  if score < 0 then score = 0 elseif score > 1 then score = 1 end
  local skey = math.floor(score * 1000000) * 1073741824 + (seq % 1073741824)
  redis.call('HSET', ik, 'id', id, 'seq', seq, 'skey', string.format('%.0f', skey), 'facet', ARGV[7],
             'state', 'pending', 'version', 1, 'actions', action, 'quarantine_uri', quri, 'moved', moved, unpack(fields))
  redis.call('HSETNX', P .. 'facets', ARGV[7], ARGV[8])
  local sec = math.floor(tonumber(now))
  local last = tonumber(redis.call('GET', P .. 'timeline-last') or '-1')
  if sec > last then
    redis.call('ZADD', P .. 'timeline', sec, seq)
    redis.call('SET', P .. 'timeline-last', sec)
  end
  move(ik, id, 'pending')
  log(ik, ARGV[9])
  return 1
end
local acts = redis.call('HGET', ik, 'actions') or ''
if action ~= '' and not string.find(',' .. acts .. ',', ',' .. action .. ',', 1, true) then
  if acts == '' then acts = action else acts = acts .. ',' .. action end
  redis.call('HSET', ik, 'actions', acts)
end
if quri ~= '' then redis.call('HSET', ik, 'quarantine_uri', quri) end
if moved == '1' then redis.call('HSET', ik, 'moved', '1') end
for i = 10, #ARGV, 2 do  -- a rule's threshold or a sample's rate the item lacked
  if (ARGV[i] == 'threshold' or ARGV[i] == 'sample_rate') and ARGV[i + 1] ~= '' then
    if (redis.call('HGET', ik, ARGV[i]) or '') == '' then redis.call('HSET', ik, ARGV[i], ARGV[i + 1]) end
  end
end
return 0
"""

# ARGV: prefix, reviewer, now, until, ids...
CLAIM = COMMON + """
local who, now, untl = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local ik = P .. 'item:' .. id
  local h = redis.call('HMGET', ik, 'state', 'claimed_by', 'claim_until')
  if h[1] == 'pending' or (h[1] == 'claimed' and (h[2] == who or tonumber(h[3] or '0') <= now)) then
    if not (h[1] == 'claimed' and h[2] == who) then
      redis.call('HINCRBY', ik, 'version', 1)
      log(ik, cjson.encode({time = now, event = 'claim', who = who}))
    end
    redis.call('HSET', ik, 'state', 'claimed', 'claimed_by', who, 'claim_until', untl)
    move(ik, id, 'claimed:' .. who)
    redis.call('ZADD', P .. 'claims', untl, id)
    out[#out + 1] = id
  end
end
return out
"""

# ARGV: prefix, now, limit
REAP = COMMON + """
local now = tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', P .. 'claims', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local ik = P .. 'item:' .. id
  local h = redis.call('HMGET', ik, 'state', 'claim_until')
  if h[1] == 'claimed' and tonumber(h[2] or '0') <= now then
    redis.call('HINCRBY', ik, 'version', 1)
    redis.call('HSET', ik, 'state', 'pending', 'claimed_by', '', 'claim_until', 0)
    move(ik, id, 'pending')
    log(ik, cjson.encode({time = now, event = 'claim expired'}))
  end
  redis.call('ZREM', P .. 'claims', id)
end
return #ids
"""

# Take an item from pending/claimed to decided, or from decided back to the reviewer's claim (undo), when the
# version the caller saw is the current one. ARGV: prefix, id, version, reviewer, now, kind (decide|undo|
# rollback-decide|rollback-undo), window or claim-until, log_json, then field/value pairs to set.
MOVE = COMMON + """
local id, version, who, now, kind, arg = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local ik = P .. 'item:' .. id
if redis.call('EXISTS', ik) == 0 then return {'missing'} end
local h = redis.call('HMGET', ik, 'state', 'version', 'claimed_by', 'claim_until', 'reviewer', 'decided_at')
local state, cur = h[1], tonumber(h[2])
if kind == 'decide' then
  if version ~= cur then return {'stale', snapshot(ik)} end
  if state == 'decided' then return {'decided', snapshot(ik)} end
  if state == 'claimed' and h[3] ~= who and tonumber(h[4] or '0') > now then return {'claimed', snapshot(ik)} end
  redis.call('ZREM', P .. 'claims', id)
  move(ik, id, 'decided')
elseif kind == 'undo' then
  if version ~= cur then return {'stale', snapshot(ik)} end
  if state ~= 'decided' then return {'notdecided', snapshot(ik)} end
  if h[5] ~= who then return {'notyours', snapshot(ik)} end
  if now - tonumber(h[6] or '0') > tonumber(arg) then return {'late', snapshot(ik)} end
  move(ik, id, 'claimed:' .. who)
elseif kind == 'rollback-decide' then
  move(ik, id, 'claimed:' .. who)
elseif kind == 'rollback-undo' then
  move(ik, id, 'decided')
end
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('HSET', ik, unpack(fields)) end
if kind ~= 'decide' and kind ~= 'rollback-undo' then
  redis.call('ZADD', P .. 'claims', tonumber(redis.call('HGET', ik, 'claim_until') or '0'), id)
end
redis.call('HINCRBY', ik, 'version', 1)
log(ik, ARGV[8])
return {'ok', snapshot(ik)}
"""
