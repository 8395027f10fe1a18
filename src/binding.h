/*
 * binding.h — private to the Lua binding (core.c, reload.c, decode.c): the link
 * between a driver connection and the Lua handle that receives from it, and how
 * the files of the binding reach each other.
 */
#ifndef SQLNOTIFY_BINDING_H
#define SQLNOTIFY_BINDING_H

#include <lua.h>

#include "dialect.h"

#define SN_ERRQ 8 /* error lines a link keeps for n:on("error") until the loop hands them over */

struct sn_handle;

/* The C side of a connection: what the driver's sink points at. Kept apart from
 * the Lua userdata so a connection can outlive one Lua state (reload). */
typedef struct sn_link {
    const sn_dialect *d;
    sn_conn *conn;
    sn_sink sink;
    struct sn_handle *receiver; /* the handle whose Lua state gets events, or NULL */
    struct sn_handle *pending;  /* the handle that takes over when a reload commits */
    int logger;
    int held;                   /* the driver was asked to hold (sn_dialect.hold) */
    struct sn_handle *querier;  /* whose h:query_start is in flight (sn_dialect.query_start) */
    int refs;                   /* handles (in one or two Lua states) using this link */
    unsigned gen;               /* the generation of the Lua state that owns it */
    int index;                  /* n-th notifier on this URL in its generation */
    char *url;
    /* Error lines for the receiver's n:on("error") hooks. They are handed to Lua from a
     * zero-delay timer, never from inside the driver call that logged them: that call may
     * have come from Lua itself, even from a coroutine. */
    char *errq[SN_ERRQ];
    int nerrq, errdropped;
    ev_timer errt;
    /* Live events in flight in a state a reload closed, for the new state's handlers
     * (h:handover), delivered from a zero-delay timer. */
    sn_event *hand;
    size_t nhand;
    ev_timer handt;
    struct sn_link *next;
} sn_link;

/* core.c: release what the link holds for the Lua side (the error queue and its timer). */
void sn_link_release_hooks(sn_link *k);

/* reload.c: the registry of live links. */

/* The link of the previous generation's notifier at this URL and position, handed to
 * h (as pending receiver) with one more reference; NULL when there is none. */
sn_link *sn_link_adopt(const char *url, struct sn_handle *h, int logger);
/* Register a new link (receiver h, one reference) in the current generation. */
void sn_link_add(sn_link *k, struct sn_handle *h);
/* Drop h's reference; the last one unregisters, closes and frees the link. */
void sn_link_unref(sn_link *k, struct sn_handle *h);

/* decode.c: adds plan, decode and null to the module table on top of L. */
void sn_decode_open(lua_State *L);

#endif
