-- sqlnotify_capture 1: sqlnotify_capture.capture(), the trigger sqlnotify-lua's durable watches use
-- where this extension is installed (see pgext/capture.c and the README).
\echo Use "CREATE EXTENSION sqlnotify_capture" to load this file. \quit
CREATE FUNCTION capture() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'capture';
-- creating a trigger with it needs EXECUTE; the trigger itself runs for every writer
REVOKE ALL ON FUNCTION capture() FROM PUBLIC;
COMMENT ON FUNCTION capture() IS 'sqlnotify-lua: appends a row change to the durable journal (a trigger only)';
-- a role granted EXECUTE must also find it by name to create a trigger with it
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
