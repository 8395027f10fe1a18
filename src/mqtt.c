/*
 * mqtt.c — sqlnotify.mqtt: MQTT publishing: libmosquitto, on our loop.
 */
#include <lauxlib.h>

#include "clients.h"
#include "sqlnotify.h"

#ifdef SN_HAVE_MOSQUITTO

void sn_mqtt_open(lua_State *L)
{
    sn_client_missing(L, "mqtt_new", "sqlnotify.mqtt", "libmosquitto", "libmosquitto-dev"); /* to be written */
}

#else

void sn_mqtt_open(lua_State *L)
{
    sn_client_missing(L, "mqtt_new", "sqlnotify.mqtt", "libmosquitto", "libmosquitto-dev");
}

#endif
