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
--   KEYS[6] key revisions (compacted topics): a hash of each message key to
--           the offsets of its latest messages, oldest first, comma-separated,
--           at most 64, a deletion's marked "d" ("7,12,19d"): one node's
--           compare-and-set and every node's key-value reads use it

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

local KEPT_REVISIONS = 64

-- The revision of a key (its latest message's offset + 1; 0 if none), from
-- the entries of a key revisions hash.
local function revision(key_revisions, key)
  local entries = redis.call('HGET', key_revisions, key)
  if not entries then
    return 0
  end
  local last = string.match(entries, '(%d+)d?$')
  return tonumber(last) + 1
end

-- Note that `key` has a message at `offset` (a deletion if `deleted`).
local function add_revision(key_revisions, key, offset, deleted)
  local entry = tostring(offset)
  if deleted then
    entry = entry .. 'd'
  end
  local entries = redis.call('HGET', key_revisions, key)
  if entries then
    local _, commas = string.gsub(entries, ',', '')
    if commas + 1 >= KEPT_REVISIONS then
      entries = string.match(entries, '^[^,]*,(.*)$')
    end
    entry = entries .. ',' .. entry
  end
  redis.call('HSET', key_revisions, key, entry)
end

-- Forget the ids stored before the window; those of `ids_at` (one message id
-- per message, '' for none) stored already, as {-1, index, offset, ...}
-- (index from 0), or nil.
local function stored_ids(ids, id_times, window, ms, ids_at)
  local old = redis.call('ZRANGEBYSCORE', id_times, '-inf', '(' .. (ms - window), 'LIMIT', 0, 1000)
  for i = 1, #old do
    redis.call('HDEL', ids, old[i])
  end
  if #old > 0 then
    redis.call('ZREMRANGEBYRANK', id_times, 0, #old - 1)
  end
  local found = {-1}
  for i = 1, #ids_at do
    if ids_at[i] ~= '' then
      local at = redis.call('HGET', ids, ids_at[i])
      if at then
        found[#found + 1] = i - 1
        found[#found + 1] = tonumber(at)
      end
    end
  end
  if #found > 1 then
    return found
  end
  return nil
end

-- Remember the ids of messages appended from offset `first`, at most `max_ids`.
local function remember_ids(ids, id_times, max_ids, ms, ids_at, first)
  for i = 1, #ids_at do
    if ids_at[i] ~= '' then
      redis.call('HSET', ids, ids_at[i], first + i - 1)
      redis.call('ZADD', id_times, ms, ids_at[i])
    end
  end
  local excess = redis.call('ZCARD', id_times) - max_ids
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', id_times, excess)
    for i = 1, #popped, 2 do
      redis.call('HDEL', ids, popped[i])
    end
  end
end

local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- append_keyed(log, meta, times, ids, id times, key revisions; append's
-- arguments, window in ms (0: ids not looked at), max ids, count, then count
-- x (message id or '', key or '', expected revision or '', '1' for a
-- deletion else '0')) -> append's answer; or, with nothing appended,
-- {-1, index, offset, ...} if some ids were stored already (as
-- append_once), else {-2, index, revision, ...} for the publishes whose
-- expected revision is not their key's (-1 as revision: the key was
-- written earlier in the batch). The caller appends the rest. One call
-- checks and appends: a compare-and-set holds across nodes.
local function append_keyed(keys, args)
  local ids, id_times, key_revisions = keys[4], keys[5], keys[6]
  local window, max_ids, count = tonumber(args[8]), tonumber(args[9]), tonumber(args[10])
  local ms = now_ms()
  local ids_at = {}
  for i = 1, count do
    ids_at[i] = args[7 + 4 * i]
  end
  if window > 0 then
    local found = stored_ids(ids, id_times, window, ms, ids_at)
    if found then
      return found
    end
  end
  local refused = {-2}
  local written = {}
  for i = 1, count do
    local key, expected = args[8 + 4 * i], args[9 + 4 * i]
    if key ~= '' then
      if expected ~= '' then
        if written[key] then
          refused[#refused + 1] = i - 1
          refused[#refused + 1] = -1
        else
          local current = revision(key_revisions, key)
          if tostring(current) ~= expected then
            refused[#refused + 1] = i - 1
            refused[#refused + 1] = current
          end
        end
      end
      written[key] = true
    end
  end
  if #refused > 1 then
    return refused
  end
  local answer = append(keys, args)
  local first = answer[1]
  for i = 1, count do
    local key = args[8 + 4 * i]
    if key ~= '' then
      add_revision(key_revisions, key, first + i - 1, args[10 + 4 * i] == '1')
    end
  end
  if window > 0 then
    remember_ids(ids, id_times, max_ids, ms, ids_at, first)
  end
  return answer
end

-- key_revisions(meta, key revisions; key) -> {next offset, entries of the key
-- or false}; without a key, {next offset, key, entries, key, entries, ...}.
local function key_revisions(keys, args)
  local following = tonumber(redis.call('HGET', keys[1], 'next') or '0')
  if args[1] ~= '' then
    return {following, redis.call('HGET', keys[2], args[1])}
  end
  local answer = {following}
  local all = redis.call('HGETALL', keys[2])
  for i = 1, #all do
    answer[#answer + 1] = all[i]
  end
  return answer
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
  local ms = now_ms()
  local ids_at = {}
  for i = 10, #args do
    ids_at[#ids_at + 1] = args[i]
  end
  local found = stored_ids(ids, id_times, window, ms, ids_at)
  if found then
    return found
  end
  local answer = append(keys, args)
  remember_ids(ids, id_times, max_ids, ms, ids_at, answer[1])
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

-- purge(log, meta, times, key revisions) -> offset of the oldest message held (the next
-- one's): an operator drops every batch the topic holds; offsets go on.
local function purge(keys, args)
  local log, meta, times = keys[1], keys[2], keys[3]
  trim_before(log, meta, tonumber(redis.call('HGET', meta, 'next') or '0'))
  redis.call('XTRIM', times, 'MAXLEN', 0)
  redis.call('HDEL', meta, 'marked') -- the next append marks its time
  if keys[4] then
    redis.call('DEL', keys[4]) -- its keys' revisions: no message is left
  end
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

-- delete(log, meta, times, ids, id times, key revisions) -> the next offset: an operator deletes the topic:
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
  if keys[6] then
    redis.call('DEL', keys[6]) -- its keys' revisions
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
redis.register_function('broker_append_keyed_v1', append_keyed)
redis.register_function('broker_key_revisions_v1', key_revisions)
redis.register_function('broker_delete_v1', delete)
redis.register_function('broker_reset_group_v1', reset_group)
redis.register_function('broker_purge_v1', purge)
redis.register_function('broker_expire_v1', expire)
