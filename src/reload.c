/*
 * reload.c — the registry of live connections (links) across Lua states. The host
 * reloads a script by running it in a new state; each of the new state's notifiers
 * adopts the connection of the old state's notifier with the same URL and position,
 * so LISTENs, cursors and triggers survive, and nothing is missed in between.
 */
#include <string.h>

#include "binding.h"
#include "sqlnotify.h"

static sn_link *links;     /* every live link */
static unsigned generation; /* of the newest Lua state */

/* How many links of the current generation use this URL: the next one's position. */
static int next_index(const char *url)
{
    int index = 0;
    for (sn_link *k = links; k; k = k->next)
        if (k->gen == generation && strcmp(k->url, url) == 0)
            index++;
    return index;
}

sn_link *sn_link_adopt(const char *url, struct sn_handle *h, int logger)
{
    if (generation == 0)
        return NULL;
    int index = next_index(url);
    for (sn_link *k = links; k; k = k->next)
        if (k->gen == generation - 1 && k->index == index && strcmp(k->url, url) == 0) {
            k->gen = generation;
            k->pending = h;
            k->logger = logger;
            k->refs++;
            return k;
        }
    return NULL;
}

void sn_link_add(sn_link *k, struct sn_handle *h)
{
    k->index = next_index(k->url);
    k->gen = generation;
    k->receiver = h;
    k->refs = 1;
    k->next = links;
    links = k;
}

void sn_link_unref(sn_link *k, struct sn_handle *h)
{
    if (k->receiver == h)
        k->receiver = NULL;
    if (k->pending == h)
        k->pending = NULL;
    if (--k->refs > 0)
        return;
    for (sn_link **p = &links; *p; p = &(*p)->next)
        if (*p == k) {
            *p = k->next;
            break;
        }
    k->d->close(k->conn);
    sn_link_release_hooks(k);
    free(k->url);
    free(k);
}

void sn_reload_begin(void) { generation++; }

/* The new state loaded: its handles receive from now on. */
void sn_reload_commit(void)
{
    for (sn_link *k = links; k; k = k->next)
        if (k->gen == generation && k->pending) {
            k->receiver = k->pending;
            k->pending = NULL;
            /* the old state's handlers in flight are gone with it: their events are
             * delivered again, to the new handlers, from the last ack */
            if (k->held && k->d->hold) {
                k->held = 0;
                k->d->hold(k->conn, 0);
            }
        }
}

/* The new state failed and was closed: the old one keeps what it had. */
void sn_reload_rollback(void)
{
    generation--;
    for (sn_link *k = links; k; k = k->next)
        if (k->gen == generation + 1) {
            k->gen = generation;
            k->pending = NULL;
        }
}
