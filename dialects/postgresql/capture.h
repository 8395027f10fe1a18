/*
 * capture.h — what the driver's plpgsql triggers and the server extension's C trigger
 * (pgext/capture.c) must agree on, written once: both include this file. Constants only,
 * since the extension is built against the server's headers and the driver against libpq's.
 */
#ifndef SQLNOTIFY_PG_CAPTURE_H
#define SQLNOTIFY_PG_CAPTURE_H

#define PG_STR_(x) #x
#define PG_STR(x) PG_STR_(x) /* a number below as SQL text: PG_STR(PG_MAX_PAYLOAD) is "7999" */

/* The largest live payload: NOTIFY refuses 8000 bytes and more. A longer row goes to the
 * overflow table (use_overflow_table) or as its key alone, marked truncated. */
#define PG_MAX_PAYLOAD 7999

/* The journal's schema, and the channel its writers wake the reader on (no watch channel
 * has a colon here). */
#define PG_JOURNAL_SCHEMA "sqlnotify"
#define PG_JOURNAL_CHANNEL "sqlnotify:journal"

/* The wake-up gate. The sequence sqlnotify.wake holds the time (ms) of the last wake-up; a
 * writer sends one when it is more than PG_WAKE_MS old, or more than PG_WAKE_AHEAD_MS in the
 * future (set by hand, or by a clock stepped back), so busy writers skip NOTIFY and its
 * cluster-wide lock. The reader polls too: a skipped wake-up costs milliseconds, never an
 * event. */
#define PG_WAKE_MS 10
#define PG_WAKE_AHEAD_MS 60000

#endif
