-- sqlnotify_capture 1 to 2: sqlnotify_capture.notify(), the trigger sqlnotify-lua's live watches use
-- where this extension is installed (see pgext/capture.c and the README).
\echo Use "ALTER EXTENSION sqlnotify_capture UPDATE" to load this file. \quit
CREATE FUNCTION notify() RETURNS trigger
  LANGUAGE c AS 'MODULE_PATHNAME', 'capture_notify';
REVOKE ALL ON FUNCTION notify() FROM PUBLIC;
COMMENT ON FUNCTION notify() IS 'sqlnotify-lua: sends a row change by NOTIFY on a live watch''s channel (a trigger only)';
