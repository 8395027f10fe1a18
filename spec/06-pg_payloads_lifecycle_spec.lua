-- Large payloads, notify() and the trigger lifecycle on PostgreSQL: the 7999-byte
-- limit (ASCII and multi-byte), truncated rows, the overflow table (in the watched
-- table's schema: spec06.sqlnotify_overflow) and its retention,
-- notify() sizes, revoke_on_model_change, cleanup_on_start / cleanup(), and ALTER TABLE
-- on a watched table. Ends with the real host logging the truncation warning.
local H = require("helper")
local sqlnotify = require("sqlnotify")
local json = require("cjson.safe").new() -- encodes as the notifier does: same defaults

local S = "spec06"
local OTHER = "spec06_other" -- a second schema, for "every trigger in the database"
local fmt = string.format
local q = H.shell_quote

local MULTI = 'é€😀"' -- 2, 3 and 4 bytes, and a quote that JSON escapes into 2 bytes

local function setup_tables()
  H.fresh_schema(S)
  H.drop_schema(OTHER)
  H.psql([[
    SET search_path = spec06;
    CREATE TABLE docs (id int PRIMARY KEY, body text, note text);
    CREATE TABLE blobs (id int PRIMARY KEY, body text);
    CREATE TABLE pairs (a int, b text, big text, PRIMARY KEY (a, b));
    CREATE TABLE bigkey (k text PRIMARY KEY, v text);
    CREATE TABLE users (id int PRIMARY KEY, email text, name text, age int);
    -- The bytes of the payload the trigger of a docs/blobs watch with extra_columns {body}
    -- builds, computed as the trigger computes it.
    CREATE FUNCTION payload_len(i int, b text) RETURNS int LANGUAGE sql AS $$
      SELECT pg_catalog.octet_length(pg_catalog.jsonb_build_object('id', pg_catalog.jsonb_build_object('id', i),
        'x', pg_catalog.jsonb_build_object('body', b))::text) $$;
  ]])
end

local collector = H.collector

-- Events reduced to what a test compares: id, truncated and the extra columns.
local function brief(events)
  local out = {}
  for i, ev in ipairs(events) do out[i] = { id = ev.id, truncated = ev.truncated, x = ev.extra_columns } end
  return out
end

local function count(sql)
  return tonumber(H.psql(sql):match("%-?%d+"))
end

-- Overflow rows stored for one channel, as "id-in-payload" strings in id order (none when
-- nothing made the overflow table in spec06).
local function overflow_rows(channel)
  local out = {}
  if H.psql("SELECT to_regclass('spec06.sqlnotify_overflow') IS NULL") == "t\n" then return out end
  local text = H.psql(fmt([[SELECT payload -> 'id' ->> 'id' FROM spec06.sqlnotify_overflow
    WHERE channel = '%s' ORDER BY id]], channel))
  for line in text:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

-- A text for docs/blobs row `id` whose trigger payload is exactly `target` bytes:
-- `unit` repeated (leaving room for JSON escapes), then ASCII filler measured by the
-- database itself.
local function row_body(id, target, unit)
  local prefix = string.rep(unit, (target - 400) // (#unit + 1))
  local base = count(fmt("SELECT spec06.payload_len(%d, $b$%s$b$)", id, prefix))
  return prefix .. string.rep("a", target - base)
end

-- A text whose notify() payload {"id":{"id":id},"x":{"body":...}} is exactly `target` bytes.
local function notify_body(id, target, unit)
  local prefix = string.rep(unit, (target - 400) // (#unit + 1))
  local base = #json.encode({ id = { id = id }, x = { body = prefix } })
  return prefix .. string.rep("a", target - base)
end

-- Every sqlnotify trigger on spec06's tables: "table trigger" -> the oids and xmins of the
-- trigger, its function and both comments. Any DDL on them (drop, create, CREATE OR
-- REPLACE, COMMENT) changes the string.
local function trigger_state()
  local out = {}
  local text = H.psql([[
    SELECT c.relname || ' ' || t.tgname, concat_ws('/', t.oid, t.xmin, p.oid, p.xmin, td.xmin, pd.xmin)
    FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace s ON s.oid = c.relnamespace
    JOIN pg_proc p ON p.oid = t.tgfoid
    JOIN pg_description td ON td.objoid = t.oid AND td.classoid = 'pg_trigger'::regclass AND td.objsubid = 0
    JOIN pg_description pd ON pd.objoid = p.oid AND pd.classoid = 'pg_proc'::regclass AND pd.objsubid = 0
    WHERE s.nspname = 'spec06' AND td.description LIKE 'sqlnotify:%'
    ORDER BY 1]])
  for k, v in text:gmatch("([^\n|]+)|([^\n]+)") do out[k] = v end
  return out
end

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- The one key of t whose table is `tbl` (a table with one sqlnotify trigger).
local function key_of(t, tbl)
  local found
  for k in pairs(t) do
    if k:match("^(%S+) ") == tbl then
      assert(found == nil, "more than one trigger on " .. tbl)
      found = k
    end
  end
  return assert(found, "no trigger on " .. tbl)
end

local MARKED_TRIGGERS = [[SELECT count(*) FROM pg_trigger t JOIN pg_description d ON d.objoid = t.oid
  AND d.classoid = 'pg_trigger'::regclass AND d.objsubid = 0 WHERE d.description LIKE 'sqlnotify:%']]
local MARKED_FUNCTIONS = [[SELECT count(*) FROM pg_proc p JOIN pg_description d ON d.objoid = p.oid
  AND d.classoid = 'pg_proc'::regclass AND d.objsubid = 0 WHERE d.description LIKE 'sqlnotify:%']]

local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  return (tostring(e):gsub("^[^:]+:%d+: ", ""))
end

-- A psql session in the background holding ACCESS EXCLUSIVE locks on `tables` until
-- unlock(); returns once the server granted them.
local LOCKER = "spec06_locker"
local function unlock()
  H.psql(fmt([[SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE application_name = '%s' AND datname = current_database()]], LOCKER))
  local deadline = H.now() + 10
  while count(fmt("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'", LOCKER)) > 0 do
    assert(H.now() < deadline, "the locking session did not end")
    H.sleep(0.02)
  end
end

local function lock_tables(tables)
  local sql = fmt("BEGIN; LOCK TABLE %s IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(10); COMMIT;",
    table.concat(tables, ", "))
  assert(H.sh(fmt("PGAPPNAME=%s psql -X -q %s -c %s >/dev/null 2>&1 </dev/null &", LOCKER, q(H.pg_url), q(sql))))
  local rels = {}
  for i, t in ipairs(tables) do rels[i] = fmt("'%s'::regclass", t) end
  local deadline = H.now() + 10
  while count(fmt([[SELECT count(*) FROM pg_locks WHERE relation IN (%s)
      AND mode = 'AccessExclusiveLock' AND granted]], table.concat(rels, ", "))) < #tables do
    assert(H.now() < deadline, "the locks were not granted")
    H.sleep(0.02)
  end
end

-- Is the locker still holding its locks? What ran meanwhile did not wait for them.
local function still_locked()
  return count(fmt("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state = 'active'",
    LOCKER)) > 0
end

describe("sqlnotify (PostgreSQL payloads and trigger lifecycle)", function()
  local made

  local function notifier(opts)
    local m = H.pg_notifier(opts)
    made[#made + 1] = m
    return m
  end

  before_each(function()
    setup_tables()
    made = {}
  end)

  after_each(function()
    unlock() -- a failed test may have left its lock behind
    for _, m in ipairs(made) do m:close() end
    made = nil
  end)

  teardown(function()
    H.drop_schema(S)
    H.drop_schema(OTHER)
  end)

  describe("the 7999-byte limit", function()
    it("sends a row of 7999 payload bytes whole and one of 8000 as its key, in ASCII and multi-byte text", function()
      local plain, hp = collector()
      local over, ho = collector()
      local n = notifier()
      n:watch(S .. ".docs", "insert", { extra_columns = { "body" } })
      n:watch(S .. ".docs", "insert",
        { extra_columns = { "body" }, channel_label = "spec06_docs_ovf", use_overflow_table = true })
      n:subscribe(S .. ".docs", "insert", hp)
      n:subscribe(S .. ".docs", "insert", { channel_label = "spec06_docs_ovf" }, ho)
      assert(n:start())
      local bodies = {
        row_body(1, 7999, "a"), row_body(2, 8000, "a"), row_body(3, 7999, MULTI), row_body(4, 8000, MULTI),
      }
      for id, body in ipairs(bodies) do
        -- the database says the payload has the intended size, and the insert succeeded
        assert.are.equal(id % 2 == 1 and 7999 or 8000,
          count(fmt("INSERT INTO spec06.docs (id, body) VALUES (%d, $b$%s$b$) RETURNING spec06.payload_len(id, body)",
            id, body)))
      end
      assert.is_true(H.run_until(function() return #plain == 4 and #over == 4 end))
      H.run_for(0.1)
      assert.are.same({
        { id = 1, truncated = false, x = { body = bodies[1] } },
        { id = 2, truncated = true, x = {} },
        { id = 3, truncated = false, x = { body = bodies[3] } },
        { id = 4, truncated = true, x = {} },
      }, brief(plain))
      assert.are.same({
        { id = 1, truncated = false, x = { body = bodies[1] } },
        { id = 2, truncated = false, x = { body = bodies[2] } },
        { id = 3, truncated = false, x = { body = bodies[3] } },
        { id = 4, truncated = false, x = { body = bodies[4] } },
      }, brief(over))
      for _, ev in ipairs(plain) do assert.are.equal("sqlnotify_spec06_docs_insert", ev.channel) end
      for _, ev in ipairs(over) do assert.are.equal("sqlnotify_spec06_docs_ovf", ev.channel) end
      -- only the 8000-byte rows of the overflow watch went through the table
      assert.are.same({}, overflow_rows("sqlnotify_spec06_docs_insert"))
      assert.are.same({ "2", "4" }, overflow_rows("sqlnotify_spec06_docs_ovf"))
    end)

    it("sends a 20,000-byte row as its key(s) with truncated = true, and the write succeeds", function()
      local got, handler = collector()
      local n = notifier()
      n:watch(S .. ".docs", "insert", { extra_columns = { "body", "note" } })
      n:watch(S .. ".pairs", "update", { extra_columns = { "big" } })
      n:watch(S .. ".bigkey", "insert", { extra_columns = { "v" } })
      n:subscribe(S .. ".docs", "insert", handler)
      n:subscribe(S .. ".pairs", "update", handler)
      n:subscribe(S .. ".bigkey", "insert", handler)
      assert(n:start())
      H.psql([[
        INSERT INTO spec06.docs VALUES (5, repeat('x', 20000), 'small');
        INSERT INTO spec06.pairs VALUES (7, 'k', 'small');
        UPDATE spec06.pairs SET big = repeat('y', 20000) WHERE a = 7;
        INSERT INTO spec06.docs VALUES (6, 'tiny', 'small');
        -- a key too large for a notification itself: nothing of the row can be sent
        INSERT INTO spec06.bigkey VALUES (repeat('k', 9000), 'v');
      ]])
      assert.is_true(H.run_until(function() return #got == 4 end))
      H.run_for(0.1)
      assert.are.same({
        { id = 5, truncated = true, x = {} },
        { id = { 7, "k" }, truncated = true, x = {} },
        { id = 6, truncated = false, x = { body = "tiny", note = "small" } },
        { truncated = true, x = {} },
      }, brief(got))
      assert.are.same({ "insert", "update", "insert", "insert" },
        { got[1].operation, got[2].operation, got[3].operation, got[4].operation })
      assert.are.same({ "docs", "pairs", "docs", "bigkey" }, { got[1].table, got[2].table, got[3].table, got[4].table })
      assert.are.equal("5|20000\n6|4\n", H.psql("SELECT id, length(body) FROM spec06.docs ORDER BY id"))
      assert.are.equal("20000\n", H.psql("SELECT length(big) FROM spec06.pairs"))
      assert.are.equal("9000\n", H.psql("SELECT length(k) FROM spec06.bigkey"))
    end)
  end)

  describe("the overflow table", function()
    it("delivers a 50,000-byte row whole to every listener from one stored row", function()
      local a, ha = collector()
      local b, hb = collector()
      local n1, n2 = notifier(), notifier()
      for _, m in ipairs { n1, n2 } do
        m:watch(S .. ".blobs", "insert", { extra_columns = { "body" }, use_overflow_table = true })
      end
      n1:subscribe(S .. ".blobs", "insert", ha)
      n2:subscribe(S .. ".blobs", "insert", hb)
      assert(n1:start())
      assert(n2:start())
      H.psql([[
        INSERT INTO spec06.blobs VALUES (1, repeat('z', 50000));
        INSERT INTO spec06.blobs VALUES (2, 'small');
      ]])
      assert.is_true(H.run_until(function() return #a == 2 and #b == 2 end))
      H.run_for(0.1)
      local want = {
        { id = 1, truncated = false, x = { body = string.rep("z", 50000) } },
        { id = 2, truncated = false, x = { body = "small" } },
      }
      assert.are.same(want, brief(a))
      assert.are.same(want, brief(b))
      -- one stored row for the large one, none for the small one
      assert.are.same({ "1" }, overflow_rows("sqlnotify_spec06_blobs_insert"))
      assert.are.equal(1, count([[SELECT count(*) FROM spec06.sqlnotify_overflow
        WHERE channel = 'sqlnotify_spec06_blobs_insert' AND octet_length(payload ->> 'x') > 50000]]))
    end)

    it("lets the write succeed and sends the key, truncated, when the overflow table cannot be written", function()
      local got, handler = collector()
      local n = notifier()
      n:watch(S .. ".blobs", "insert", { extra_columns = { "body" }, use_overflow_table = true })
      n:subscribe(S .. ".blobs", "insert", handler)
      assert(n:start())
      local function put_back()
        H.psql([[DO $$ BEGIN
          IF pg_catalog.to_regclass('spec06.sqlnotify_overflow') IS NULL THEN
            ALTER TABLE IF EXISTS spec06.sqlnotify_overflow_spec06_away RENAME TO sqlnotify_overflow;
          END IF; END $$]])
      end
      H.psql("ALTER TABLE spec06.sqlnotify_overflow RENAME TO sqlnotify_overflow_spec06_away")
      finally(put_back)
      H.psql([[
        INSERT INTO spec06.blobs VALUES (1, repeat('z', 50000));
        INSERT INTO spec06.blobs VALUES (2, 'small');
      ]])
      assert.is_true(H.run_until(function() return #got == 2 end))
      H.run_for(0.1)
      put_back()
      assert.are.same({
        { id = 1, truncated = true, x = {} },
        { id = 2, truncated = false, x = { body = "small" } },
      }, brief(got))
      assert.are.equal("1|50000\n2|5\n", H.psql("SELECT id, length(body) FROM spec06.blobs ORDER BY id"))
      assert.are.same({}, overflow_rows("sqlnotify_spec06_blobs_insert"))
    end)

    it("removes rows older than the notifier's retention on a timer, and only those", function()
      local n = notifier{ retention = 4 } -- prunes every 4 s from now
      n:watch(S .. ".blobs", "insert", { use_overflow_table = true })
      assert(n:start()) -- the overflow table exists from here on
      local ids = {}
      for line in H.psql([[
        INSERT INTO spec06.sqlnotify_overflow (channel, payload, created_at) VALUES
          ('sqlnotify_spec06_old', '{"id": {"id": 1}}', now() - interval '2 hours'),
          ('sqlnotify_spec06_old', '{"id": {"id": 2}}', now() - interval '1 hour 1 second'),
          ('sqlnotify_spec06_old', '{"id": {"id": 3}}', now() - interval '10 seconds'),
          ('sqlnotify_spec06_new', '{"id": {"id": 4}}', now()),
          ('sqlnotify_spec06_new', '{"id": {"id": 5}}', now())
        RETURNING id]]):gmatch("%d+") do ids[#ids + 1] = line end
      assert.are.equal(5, #ids)
      local function remaining(channel)
        local rows = assert(n:query([[SELECT payload -> 'id' ->> 'id' AS i FROM spec06.sqlnotify_overflow
          WHERE channel = $1 AND id BETWEEN $2::bigint AND $3::bigint ORDER BY id]], channel, ids[1], ids[5]))
        local out = {}
        for i, r in ipairs(rows) do out[i] = r.i end
        return out
      end
      assert.are.same({ "1", "2", "3" }, remaining("sqlnotify_spec06_old"))
      local t0 = H.now()
      assert.is_true(H.run_until(function() return #remaining("sqlnotify_spec06_old") == 0 end, 10))
      assert.is_true(H.now() - t0 > 1, "pruned on the timer, not at start")
      assert.are.same({ "4", "5" }, remaining("sqlnotify_spec06_new"))
    end)

    it("keeps delivering when the prune falls due while another session locks the overflow table", function()
      local got, handler = collector()
      local n = notifier{ retention = 1 } -- prunes every second
      n:watch(S .. ".blobs", "insert", { use_overflow_table = true }) -- the overflow table exists
      n:watch(S .. ".docs", "insert")
      n:subscribe(S .. ".docs", "insert", handler)
      assert(n:start())
      lock_tables { "spec06.sqlnotify_overflow" } -- as REINDEX or VACUUM FULL would, for 10 s
      finally(unlock)
      H.run_for(1.5) -- a prune falls due meanwhile
      H.psql("INSERT INTO spec06.docs (id) VALUES (1)")
      assert.is_true(H.run_until(function() return #got == 1 or not still_locked() end, 15))
      assert.is_true(still_locked(), "the loop waited for the lock to go before delivering")
      assert.are.equal(1, #got)
      assert.are.same({ { id = 1, truncated = false, x = {} } }, brief(got))
    end)

    it("refuses a retention that is not a positive number of seconds", function()
      for _, bad in ipairs { 0, -1, "60" } do
        assert.are.equal("sqlnotify: retention must be a number of seconds above zero",
          err_of(function() sqlnotify.notifier{ url = H.pg_url, retention = bad } end))
      end
    end)
  end)

  describe("notify", function()
    it("sends 7999 bytes and refuses 8000 without overflow, giving the size, in ASCII and multi-byte text", function()
      local got, handler = collector()
      local n = notifier()
      n:watch(S .. ".docs", "insert", { extra_columns = { "body" } })
      n:subscribe(S .. ".docs", "insert", handler)
      assert(n:start())
      local ascii, multi = notify_body(1, 7999, "a"), notify_body(2, 7999, MULTI)
      assert.is_true(n:notify(S .. ".docs", "insert", { id = 1, body = ascii }))
      assert.is_true(n:notify(S .. ".docs", "insert", { id = 2, body = multi }))
      for _, case in ipairs { { 3, "a" }, { 4, MULTI } } do
        local body = notify_body(case[1], 8000, case[2])
        assert.are.equal(
          "sqlnotify: notify payload is 8000 bytes, over the 7999-byte limit of postgresql notifications "
            .. "(use use_overflow_table)",
          err_of(function() n:notify(S .. ".docs", "insert", { id = case[1], body = body }) end))
      end
      assert.is_true(H.run_until(function() return #got == 2 end))
      H.run_for(0.1)
      assert.are.same({
        { id = 1, truncated = false, x = { body = ascii } },
        { id = 2, truncated = false, x = { body = multi } },
      }, brief(got))
      assert.are.same({}, overflow_rows("sqlnotify_spec06_docs_insert"))
    end)

    it("sends a 30,000-byte payload whole through the overflow table", function()
      local got, handler = collector()
      local n = notifier()
      n:watch(S .. ".docs", "insert", { extra_columns = { "body" } })
      n:watch(S .. ".blobs", "insert", { extra_columns = { "body" }, use_overflow_table = true })
      n:subscribe(S .. ".docs", "insert", handler)
      n:subscribe(S .. ".blobs", "insert", handler)
      assert(n:start())
      local big = string.rep("é", 15000) -- 30,000 bytes
      -- per call on a watch without overflow, and by default on an overflow watch
      assert.is_true(n:notify(S .. ".docs", "insert", { id = 1, body = big }, { use_overflow_table = true }))
      assert.is_true(n:notify(S .. ".blobs", "insert", { id = 2, body = big }))
      -- use_overflow_table = false overrides the watch's
      local size = #json.encode({ id = { id = 3 }, x = { body = big } })
      assert.are.equal(fmt("sqlnotify: notify payload is %d bytes, over the 7999-byte limit of postgresql "
          .. "notifications (use use_overflow_table)", size),
        err_of(function()
          n:notify(S .. ".blobs", "insert", { id = 3, body = big }, { use_overflow_table = false })
        end))
      assert.is_true(H.run_until(function() return #got == 2 end))
      H.run_for(0.1)
      assert.are.same({
        { id = 1, truncated = false, x = { body = big } },
        { id = 2, truncated = false, x = { body = big } },
      }, brief(got))
      assert.are.same({ "sqlnotify_spec06_docs_insert", "sqlnotify_spec06_blobs_insert" },
        { got[1].channel, got[2].channel })
      assert.are.same({ "1" }, overflow_rows("sqlnotify_spec06_docs_insert"))
      assert.are.same({ "2" }, overflow_rows("sqlnotify_spec06_blobs_insert"))
    end)
  end)

  describe("revoke_on_model_change", function()
    local function watch_all(m, update_extra)
      m:watch(S .. ".users", "insert", { extra_columns = { "email" } })
      m:watch(S .. ".users", "update", { extra_columns = update_extra or { "email" } })
      m:watch(S .. ".docs", "insert", { extra_columns = { "body" }, use_overflow_table = true })
      return m
    end

    it("leaves matching triggers alone at a second start: no DDL, no lock on the watched tables", function()
      local n1 = watch_all(notifier())
      assert(n1:start())
      local before = trigger_state()
      assert.are.equal(3, #keys(before))
      n1:close()
      lock_tables { "spec06.users", "spec06.docs" }
      finally(unlock)
      local got, handler = collector()
      local n2 = watch_all(notifier())
      n2:subscribe(S .. ".users", "insert", handler)
      assert(n2:start())
      assert.is_true(still_locked(), "start waited for the lock on the watched tables")
      assert.are.same(before, trigger_state())
      unlock()
      H.psql("INSERT INTO spec06.users (id, email) VALUES (1, 'a@example.com')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      H.run_for(0.1)
      assert.are.same({ { id = 1, truncated = false, x = { email = "a@example.com" } } }, brief(got))
    end)

    it("re-creates only the trigger whose watch changed", function()
      local n1 = watch_all(notifier())
      assert(n1:start())
      local before = trigger_state()
      n1:close()
      local got, handler = collector()
      local n2 = watch_all(notifier(), { "email", "name" })
      n2:subscribe(S .. ".users", "update", handler)
      assert(n2:start())
      local after = trigger_state()
      assert.are.same(keys(before), keys(after)) -- same names: same channels
      local changed = {}
      for k, v in pairs(before) do
        if after[k] ~= v then changed[#changed + 1] = k end
      end
      assert.are.equal(1, #changed)
      -- the changed one is the update trigger: the one that now sends name
      H.psql([[INSERT INTO spec06.users VALUES (1, 'a@x', 'Ann', 30);
               UPDATE spec06.users SET name = 'Anna' WHERE id = 1;]])
      assert.is_true(H.run_until(function() return #got == 1 end))
      H.run_for(0.1)
      assert.are.same({ { id = 1, truncated = false, x = { email = "a@x", name = "Anna" } } }, brief(got))
      local upd = H.psql([[SELECT c.relname || ' ' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'spec06'::regnamespace AND t.tgtype & 16 <> 0]]):match("[^\n]+")
      assert.are.same({ upd }, changed)
    end)

    it("re-creates a trigger at the next start when its table's columns changed", function()
      local n1 = watch_all(notifier())
      assert(n1:start())
      local before = trigger_state()
      n1:close()
      H.psql("ALTER TABLE spec06.docs ADD COLUMN extra int")
      local n2 = watch_all(notifier())
      assert(n2:start())
      local after = trigger_state()
      assert.are.same(keys(before), keys(after))
      local docs = key_of(before, "docs")
      assert.are_not.equal(before[docs], after[docs])
      for k, v in pairs(before) do
        if k ~= docs then assert.are.equal(v, after[k], k) end
      end
    end)

    it("keeps existing triggers as they are with revoke_on_model_change = false", function()
      local n1 = watch_all(notifier())
      assert(n1:start())
      local before = trigger_state()
      n1:close()
      H.psql("ALTER TABLE spec06.docs ADD COLUMN extra int")
      local got, handler = collector()
      local n2 = watch_all(notifier{ revoke_on_model_change = false }, { "email", "name" })
      n2:subscribe(S .. ".users", "update", handler)
      assert(n2:start())
      assert.are.same(before, trigger_state())
      -- the old trigger still sends what it sent: email only
      H.psql([[INSERT INTO spec06.users VALUES (1, 'a@x', 'Ann', 30);
               UPDATE spec06.users SET name = 'Anna' WHERE id = 1;]])
      assert.is_true(H.run_until(function() return #got == 1 end))
      H.run_for(0.1)
      assert.are.same({ { id = 1, truncated = false, x = { email = "a@x" } } }, brief(got))
    end)
  end)

  describe("cleanup", function()
    -- Watches with use_overflow_table keep a plpgsql function each; the others call the
    -- extension's sqlnotify_capture.notify(), which cleanup must never drop.
    local EXT_FUNCTIONS = "SELECT count(*) FROM pg_proc WHERE pronamespace = 'sqlnotify_capture'::regnamespace"

    it("drops every sqlnotify trigger and function in the database before installing with cleanup_on_start", function()
      H.psql([[
        CREATE SCHEMA spec06_other;
        CREATE TABLE spec06_other.t (id int PRIMARY KEY);
        -- the user's own triggers, one of them commented: never ours to drop
        CREATE FUNCTION spec06.mine() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
        CREATE TRIGGER mine_a AFTER INSERT ON spec06.users FOR EACH ROW EXECUTE FUNCTION spec06.mine();
        CREATE TRIGGER mine_b AFTER UPDATE ON spec06.users FOR EACH ROW EXECUTE FUNCTION spec06.mine();
        COMMENT ON TRIGGER mine_b ON spec06.users IS 'my audit trigger';
        COMMENT ON FUNCTION spec06.mine() IS 'my function';
      ]])
      local n1 = notifier()
      n1:watch(S .. ".users", "insert"):watch(S .. ".docs", "update", { use_overflow_table = true })
        :watch(OTHER .. ".t", "delete", { use_overflow_table = true })
      assert(n1:start())
      n1:close() -- its triggers stay
      assert.is_true(count(MARKED_TRIGGERS) >= 3)
      assert.are.equal("sqlnotify_capture.notify\n", H.psql([[SELECT t.tgfoid::regproc FROM pg_trigger t
        WHERE t.tgrelid = 'spec06.users'::regclass AND t.tgname LIKE 'sqlnotify%']]))
      -- a dropped table takes its trigger along but leaves the function behind
      H.psql("DROP TABLE spec06_other.t")
      assert.are.equal(1, count([[SELECT count(*) FROM pg_proc WHERE pronamespace = 'spec06_other'::regnamespace]]))
      local before = trigger_state()
      local got, handler = collector()
      local n2 = notifier{ cleanup_on_start = true }
      n2:watch(S .. ".users", "insert")
      n2:subscribe(S .. ".users", "insert", handler)
      assert(n2:start())
      -- in the whole database, only the one n2 installed is left, and it is new
      assert.are.equal(1, count(MARKED_TRIGGERS))
      assert.are.equal(0, count(MARKED_FUNCTIONS)) -- the new one calls notify()
      assert.are.equal(2, count(EXT_FUNCTIONS))
      local after = trigger_state()
      local users = key_of(after, "users")
      assert.are.same({ users }, keys(after))
      assert.are_not.equal(before[users], after[users])
      assert.are.equal("mine_a\nmine_b\n", H.psql([[SELECT t.tgname FROM pg_trigger t
        WHERE t.tgrelid = 'spec06.users'::regclass AND t.tgname LIKE 'mine%' ORDER BY 1]]))
      assert.are.equal(1, count("SELECT count(*) FROM pg_proc WHERE proname = 'mine'"))
      assert.are.equal(0, count([[SELECT count(*) FROM pg_proc WHERE pronamespace = 'spec06_other'::regnamespace]]))
      H.psql("INSERT INTO spec06.users (id) VALUES (1)")
      assert.is_true(H.run_until(function() return #got == 1 end))
      assert.are.same({ { id = 1, truncated = false, x = {} } }, brief(got))
    end)

    it("drops this notifier's own triggers and functions with n:cleanup(), and only those", function()
      local m1, m2 = notifier(), notifier()
      m1:watch(S .. ".users", "insert"):watch(S .. ".users", "update", { use_overflow_table = true })
      m2:watch(S .. ".docs", "insert", { use_overflow_table = true })
      assert(m1:start())
      assert(m2:start())
      local before = trigger_state()
      assert.are.equal(3, #keys(before))
      local docs = key_of(before, "docs")
      assert.is_true(m1:cleanup())
      assert.are.same({ [docs] = before[docs] }, trigger_state())
      assert.are.equal(1, count([[SELECT count(*) FROM pg_proc WHERE pronamespace = 'spec06'::regnamespace
        AND proname LIKE 'sqlnotify\_%']]))
      assert.is_true(m1:cleanup()) -- twice is fine
      assert.is_true(m2:cleanup())
      assert.are.same({}, trigger_state())
      assert.are.equal(0, count([[SELECT count(*) FROM pg_proc WHERE pronamespace = 'spec06'::regnamespace
        AND proname LIKE 'sqlnotify\_%']]))
      assert.are.equal(2, count(EXT_FUNCTIONS))
    end)
  end)

  describe("ALTER TABLE on a watched table", function()
    it("never fails the table's writes, and events keep flowing", function()
      local ins, hi = collector()
      local upd, hu = collector()
      local del, hd = collector()
      local n = notifier()
      n:watch(S .. ".users", "insert", { extra_columns = { "email", "name", "age" } })
      n:watch(S .. ".users", "insert", { channel_label = "spec06_age", extra_columns = { "age" } })
      local ages, ha = collector()
      n:subscribe(S .. ".users", "insert", { channel_label = "spec06_age" }, ha)
      n:watch(S .. ".users", "update", { trigger_columns = { "email" }, extra_columns = { "email" } })
      n:subscribe(S .. ".users", "insert", hi)
      n:watch(S .. ".users", "delete", { extra_columns = { "email", "age" } })
      n:subscribe(S .. ".users", "update", hu)
      n:subscribe(S .. ".users", "delete", hd)
      assert(n:start())
      H.psql([[
        ALTER TABLE spec06.users ADD COLUMN nick text;
        INSERT INTO spec06.users VALUES (1, 'a@x', 'Ann', 30, 'an');
        UPDATE spec06.users SET email = 'a2@x' WHERE id = 1;
        ALTER TABLE spec06.users RENAME COLUMN name TO full_name;
        INSERT INTO spec06.users (id, email, full_name, age) VALUES (2, 'b@x', 'Bob', 31);
        ALTER TABLE spec06.users ALTER COLUMN age TYPE bigint;
        INSERT INTO spec06.users (id, email, full_name, age) VALUES (3, 'c@x', 'Cy', 32);
        ALTER TABLE spec06.users DROP COLUMN email;
        INSERT INTO spec06.users (id, full_name, age) VALUES (4, 'Di', 33);
        UPDATE spec06.users SET full_name = 'Dee', age = 34 WHERE id = 4;
        INSERT INTO spec06.users (id) VALUES (5);
        DELETE FROM spec06.users WHERE id = 5;
      ]])
      assert.is_true(H.run_until(function() return #ins == 5 and #ages == 5 and #upd == 1 and #del == 1 end))
      H.run_for(0.2)
      -- a watched column renamed or dropped: the other columns keep arriving (spec 27: the
      -- log names it, the trigger is made again without it)
      assert.are.same({
        { id = 1, truncated = false, x = { email = "a@x", name = "Ann", age = 30 } },
        { id = 2, truncated = false, x = { email = "b@x", age = 31 } },
        { id = 3, truncated = false, x = { email = "c@x", age = 32 } },
        { id = 4, truncated = false, x = { age = 33 } },
        { id = 5, truncated = false, x = {} },
      }, brief(ins))
      -- a type change is no problem
      assert.are.same({
        { id = 1, truncated = false, x = { age = 30 } },
        { id = 2, truncated = false, x = { age = 31 } },
        { id = 3, truncated = false, x = { age = 32 } },
        { id = 4, truncated = false, x = { age = 33 } },
        { id = 5, truncated = false, x = {} },
      }, brief(ages))
      assert.are.same({ { id = 5, truncated = false, x = {} } }, brief(del))
      -- the update watch fires only when email changed: there is no email any more
      assert.are.same({ { id = 1, truncated = false, x = { email = "a2@x" } } }, brief(upd))
      assert.are.equal("1|Ann|30|an\n2|Bob|31|\n3|Cy|32|\n4|Dee|34|\n",
        H.psql("SELECT id, full_name, age, nick FROM spec06.users ORDER BY id"))
    end)

    it("has the next start re-create the trigger, and reports a watched column that vanished", function()
      local n1 = notifier()
      n1:watch(S .. ".users", "insert", { extra_columns = { "email", "name" } })
      assert(n1:start())
      local before = trigger_state()
      n1:close()
      H.psql([[ALTER TABLE spec06.users DROP COLUMN email;
               INSERT INTO spec06.users (id, name) VALUES (1, 'while nobody listens');]])
      local n2 = notifier()
      assert.are.equal('sqlnotify: unknown column "email" in extra_columns of table "spec06"."users"',
        err_of(function() n2:watch(S .. ".users", "insert", { extra_columns = { "email", "name" } }) end))
      assert.are.equal('sqlnotify: unknown column "email" in trigger_columns of table "spec06"."users"',
        err_of(function() n2:watch(S .. ".users", "update", { trigger_columns = { "email" } }) end))
      local got, handler = collector()
      n2:watch(S .. ".users", "insert", { extra_columns = { "name" } })
      n2:subscribe(S .. ".users", "insert", handler)
      assert(n2:start())
      local after = trigger_state()
      assert.are.same(keys(before), keys(after)) -- the same channel's trigger ...
      local users = key_of(after, "users")
      assert.are_not.equal(before[users], after[users]) -- ... made anew
      H.psql("INSERT INTO spec06.users (id, name) VALUES (2, 'Bo')")
      assert.is_true(H.run_until(function() return #got == 1 end))
      H.run_for(0.1)
      assert.are.same({ { id = 2, truncated = false, x = { name = "Bo" } } }, brief(got))
    end)
  end)

  describe("the host", function()
    it("warns once about truncated rows; delivers 20,000 bytes truncated, 50,000 and a 30,000 notify whole", function()
      local p = H.host([[
        local sqlnotify = require("sqlnotify")
        local n = assert(sqlnotify.notifier{ url = arg[1] })
        n:watch("spec06.docs", "insert", { extra_columns = { "body" } })
        n:watch("spec06.blobs", "insert", { extra_columns = { "body" }, use_overflow_table = true })
        local function show(ev)
          print(ev.channel, ev.id, ev.truncated, ev.extra_columns.body and #ev.extra_columns.body or "-")
        end
        n:subscribe("spec06.docs", "insert", show)
        n:subscribe("spec06.blobs", "insert", function(ev)
          show(ev)
          local big = { id = 3, body = string.rep("n", 30000) }
          assert(n:notify("spec06.docs", "insert", big, { use_overflow_table = true }))
        end)
        assert(n:start())
        print("ready")
      ]], { H.pg_url })
      assert.is_true(p:wait_for("ready\n"), p:stderr())
      H.psql([[
        INSERT INTO spec06.docs VALUES (1, repeat('x', 20000));
        INSERT INTO spec06.docs VALUES (4, repeat('x', 20000));
        INSERT INTO spec06.blobs VALUES (2, repeat('z', 50000));
      ]])
      local want = table.concat({
        "ready",
        "sqlnotify_spec06_docs_insert\t1\ttrue\t-",
        "sqlnotify_spec06_docs_insert\t4\ttrue\t-",
        "sqlnotify_spec06_blobs_insert\t2\tfalse\t50000",
        "sqlnotify_spec06_docs_insert\t3\tfalse\t30000",
      }, "\n") .. "\n"
      assert.is_true(p:wait_for("\t3\tfalse\t30000\n"), p:stdout() .. p:stderr())
      p:kill("TERM")
      assert.are.equal(0, p:wait())
      assert.are.equal(want, p:stdout())
      local err = p:stderr()
      local warning = "warn  sqlnotify: row too large for a notification on channel sqlnotify_spec06_docs_insert; "
        .. "delivered its key only (use_overflow_table = true sends it whole)\n"
      local _, times = err:gsub(warning:gsub("%p", "%%%0"), "")
      assert.are.equal(1, times, err)
      assert.is_nil(err:find("error", 1, true), err)
      p:assert_clean()
      assert.are.equal("1|20000\n4|20000\n", H.psql("SELECT id, length(body) FROM spec06.docs ORDER BY id"))
      assert.are.same({ "3" }, overflow_rows("sqlnotify_spec06_docs_insert"))
      assert.are.same({ "2" }, overflow_rows("sqlnotify_spec06_blobs_insert"))
    end)
  end)
end)
