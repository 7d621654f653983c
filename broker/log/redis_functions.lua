#!lua name=broker_v1
-- The broker's Redis Functions, loaded by every node at start. The version is
-- in the library's name: a node of a later version loads broker_v2 beside it.
--
-- Keys of one topic share its hash tag, so a topic lives in one slot:
--   KEYS[1] the log: a stream with one entry per appended batch; entry ID
--           "<offset of its first message + 1>-0", fields n (message count)
--           and b (the batch: n little-endian u32 lengths, then the payloads)
--   KEYS[2] meta: a hash; next (offset the next message gets), first (offset
--           of the oldest message held), bytes (payload bytes ever appended),
--           appended (when the last batch was, in ms by Redis's clock)
--   KEYS[3] times: a stream of (time, offset the next message got then),
--           at most one entry a second: retention by age reads it, never the log
--   KEYS[4] ids: a hash of the message ids stored lately (exactly-once
--           publishing) to the offset of the message that carried each
--   KEYS[5] id times: a sorted set of the same ids, by when they were stored

-- Drop whole batches that end before `offset`: the batch holding it stays.
-- At the log's end, drop everything.
local function trim_before(log, meta, offset)
  local first = tonumber(redis.call('HGET', meta, 'first') or '0')
  if offset <= first then
    return
  end
  local following = tonumber(redis.call('HGET', meta, 'next') or '0')
  if offset >= following then
    redis.call('XTRIM', log, 'MAXLEN', 0)
    redis.call('HSET', meta, 'first', following)
    return
  end
  local holding = redis.call('XREVRANGE', log, offset + 1, '-', 'COUNT', 1)
  if #holding == 0 then
    return
  end
  local id = holding[1][1]
  redis.call('XTRIM', log, 'MINID', id)
  local kept = tonumber(string.match(id, '^(%d+)')) - 1
  if kept > first then
    redis.call('HSET', meta, 'first', kept)
  end
end

-- append(log, meta, times; channel, count, bytes, batch, max messages, max bytes,
-- largest batch announced) -> {first offset, next offset, oldest held}. Count and bytes
-- limits of 0 mean none; the bytes limit is kept at the topic's mean message
-- size (approximately).
local function append(keys, args)
  local log, meta, times = keys[1], keys[2], keys[3]
  local count = tonumber(args[2])
  local first = tonumber(redis.call('HGET', meta, 'next') or '0')
  local following = first + count
  redis.call('XADD', log, (first + 1) .. '-0', 'n', count, 'b', args[4])
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('HSET', meta, 'next', following, 'appended', ms)
  local total = redis.call('HINCRBY', meta, 'bytes', tonumber(args[3]))
  if ms - tonumber(redis.call('HGET', meta, 'marked') or '0') >= 1000 then
    redis.call('XADD', times, '*', 'o', first)
    redis.call('HSET', meta, 'marked', ms)
  end
  local keep = tonumber(args[5])
  local max_bytes = tonumber(args[6])
  if max_bytes > 0 and total > 0 then
    local fit = math.max(math.floor(max_bytes * following / total), 1)
    if keep == 0 or fit < keep then
      keep = fit
    end
  end
  if keep > 0 and following - keep > 0 then
    trim_before(log, meta, following - keep)
  end
  if args[1] ~= '' then
    -- Nodes following the topic hear its new end, and a small batch itself
    -- ("first:count:batch"), which saves them a read.
    if #args[4] <= tonumber(args[7]) then
      redis.call('SPUBLISH', args[1], first .. ':' .. count .. ':' .. args[4])
    else
      redis.call('SPUBLISH', args[1], following)
    end
  end
  return {first, following, tonumber(redis.call('HGET', meta, 'first') or '0')}
end

-- append_once(log, meta, times, ids, id times; append's arguments, window in
-- ms, max ids, then one message id per message ('' for none)) -> append's
-- answer, or, if some ids were stored already, {-1, index, offset, ...}
-- (index from 0 among the messages, offset of the copy stored) and nothing
-- appended: the caller appends the rest. One call checks and appends, so
-- no two nodes store one id twice.
local function append_once(keys, args)
  local ids, id_times = keys[4], keys[5]
  local window, max_ids = tonumber(args[8]), tonumber(args[9])
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local old = redis.call('ZRANGEBYSCORE', id_times, '-inf', '(' .. (ms - window), 'LIMIT', 0, 1000)
  for i = 1, #old do
    redis.call('HDEL', ids, old[i])
  end
  if #old > 0 then
    redis.call('ZREMRANGEBYRANK', id_times, 0, #old - 1)
  end
  local found = {-1}
  for i = 10, #args do
    if args[i] ~= '' then
      local at = redis.call('HGET', ids, args[i])
      if at then
        found[#found + 1] = i - 10
        found[#found + 1] = tonumber(at)
      end
    end
  end
  if #found > 1 then
    return found
  end
  local answer = append(keys, args)
  local first = answer[1]
  for i = 10, #args do
    if args[i] ~= '' then
      redis.call('HSET', ids, args[i], first + i - 10)
      redis.call('ZADD', id_times, ms, args[i])
    end
  end
  local excess = redis.call('ZCARD', id_times) - max_ids
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', id_times, excess)
    for i = 1, #popped, 2 do
      redis.call('HDEL', ids, popped[i])
    end
  end
  return answer
end

-- expire(log, meta, times; max age in ms) -> offset of the oldest message held.
-- Drops the batches appended before the last mark older than the max age
-- (by Redis's clock, which every node shares).
local function expire(keys, args)
  local log, meta, times = keys[1], keys[2], keys[3]
  local now = redis.call('TIME')
  local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(args[1])
  local older = redis.call('XREVRANGE', times, '(' .. cutoff .. '-0', '-', 'COUNT', 1)
  if tonumber(redis.call('HGET', meta, 'appended') or '0') < cutoff then
    -- Nothing appended since the cutoff: everything is older.
    trim_before(log, meta, tonumber(redis.call('HGET', meta, 'next') or '0'))
    redis.call('XTRIM', times, 'MAXLEN', 0)
  elseif #older > 0 then
    trim_before(log, meta, tonumber(older[1][2][2]))
    redis.call('XTRIM', times, 'MINID', older[1][1])
  end
  return tonumber(redis.call('HGET', meta, 'first') or '0')
end

-- purge(log, meta, times) -> offset of the oldest message held (the next
-- one's): an operator drops every batch the topic holds; offsets go on.
local function purge(keys, args)
  local log, meta, times = keys[1], keys[2], keys[3]
  trim_before(log, meta, tonumber(redis.call('HGET', meta, 'next') or '0'))
  redis.call('XTRIM', times, 'MAXLEN', 0)
  redis.call('HDEL', meta, 'marked') -- the next append marks its time
  return tonumber(redis.call('HGET', meta, 'first') or '0')
end

-- The ID after which a consumer group reads the batch holding `offset` (and
-- the batches after it).
local function before_batch(log, offset)
  local holding = redis.call('XREVRANGE', log, offset + 1, '-', 'COUNT', 1)
  local first = offset
  if #holding > 0 then
    first = tonumber(string.match(holding[1][1], '^(%d+)')) - 1
  end
  if first > 0 then
    return first .. '-0', first
  end
  return '0', 0
end

-- delete(log, meta, times) -> the next offset: an operator deletes the topic:
-- its batches, its consumer groups and its time marks go. Meta keeps where
-- offsets go on (first = next): nodes that hold the topic open read on from
-- there if the name is used again, and never see an offset twice.
local function delete(keys, args)
  local log, meta, times = keys[1], keys[2], keys[3]
  local following = tonumber(redis.call('HGET', meta, 'next') or '0')
  redis.call('DEL', log, times)
  if keys[5] then
    redis.call('DEL', keys[4], keys[5]) -- the message ids it remembered
  end
  if following > 0 then
    redis.call('HSET', meta, 'first', following)
    redis.call('HDEL', meta, 'marked')
  end
  return following
end

-- reset_group(log, meta; group, offset) -> the offset it reads from now, or
-- -1 if there is no such group: made again (what it had claimed forgotten)
-- to read from the batch holding `offset`, or from the next batch appended
-- if `offset` is the log's end.
local function reset_group(keys, args)
  local log, meta, group = keys[1], keys[2], args[1]
  if redis.call('EXISTS', log) == 0 then
    return -1
  end
  if redis.call('XGROUP', 'DESTROY', log, group) == 0 then
    return -1
  end
  local offset = tonumber(args[2])
  local following = tonumber(redis.call('HGET', meta, 'next') or '0')
  local id, first
  if offset >= following then
    id, first = following .. '-0', following
  else
    id, first = before_batch(log, offset)
  end
  redis.call('XGROUP', 'CREATE', log, group, id)
  return first
end

redis.register_function('broker_append_v1', append)
redis.register_function('broker_append_once_v1', append_once)
redis.register_function('broker_delete_v1', delete)
redis.register_function('broker_reset_group_v1', reset_group)
redis.register_function('broker_purge_v1', purge)
redis.register_function('broker_expire_v1', expire)
