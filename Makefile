# sqlnotify-lua — build, test, demo, install.
#   make                      build build/sqlnotify-lua and build/sqlnotify/core.so
#   make check [SANITIZE=address]   install missing packages, start PostgreSQL, run every spec
#   make demo                 run scripts/examples/demo.lua on a throwaway SQLite file
#   make demo-live            serve scripts/examples/live.lua (changes in the browser) until Ctrl-C
#   make bench                measure against a bare libpq listener
#   make install PREFIX=/dir  bin/, lib/lua/5.4/, share/lua/5.4/ under /dir
#   make install-pgext        the durable trigger in C (pgext/) into the local PostgreSQL server
#                             (PG_CONFIG=/usr/lib/postgresql/<major>/bin/pg_config for another one)

PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
LIBDIR  ?= $(PREFIX)/lib/lua/5.4
LUADIR  ?= $(PREFIX)/share/lua/5.4

CC      ?= cc
PKGS    := lua5.4 libpq sqlite3
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -fPIC -Wall -Wextra -Werror -Isrc $(PKG_CFLAGS)
DB_LIBS := -lpq -lsqlite3 -lev

ifneq ($(SANITIZE),)
BUILD   ?= build-$(SANITIZE)
CFLAGS  += -fsanitize=$(SANITIZE),undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=$(SANITIZE),undefined
else
BUILD   ?= build
endif

HOST    := $(BUILD)/sqlnotify-lua
MODULE  := $(BUILD)/sqlnotify/core.so
CONFIG_FILE := $(BUILD)/config.flags
OBJS    := $(BUILD)/core.o $(BUILD)/decode.o $(BUILD)/reload.o $(BUILD)/io.o $(BUILD)/sbuf.o
OBJS    += $(BUILD)/sdnotify.o $(BUILD)/log.o $(BUILD)/metrics.o $(BUILD)/members.o
HEADERS := src/dialect.h src/sqlnotify.h src/binding.h

# Each driver is a folder, dialects/DIR, with its private headers: its x.c is compiled to
# $(BUILD)/PREFIX-x.o, and its x.sql (SQL kept as data) to the C string PREFIX_x_sql in
# $(BUILD)/PREFIX-x-sql.o. One line per driver: $(call driver,PREFIX,DIR,CFLAGS).
define driver
OBJS += $$(patsubst dialects/$(2)/%.c,$$(BUILD)/$(1)-%.o,$$(wildcard dialects/$(2)/*.c))
OBJS += $$(patsubst dialects/$(2)/%.sql,$$(BUILD)/$(1)-%-sql.o,$$(wildcard dialects/$(2)/*.sql))
$$(BUILD)/$(1)-%.o: dialects/$(2)/%.c $$(wildcard dialects/$(2)/*.h) src/dialect.h $$(CONFIG_FILE)
	$$(CC) $$(CFLAGS) $(3) -c -o $$@ $$<
$$(BUILD)/$(1)-%-sql.c: dialects/$(2)/%.sql tools/embed.sh
	@mkdir -p $$(BUILD)
	sh tools/embed.sh $(1)_$$(subst -,_,$$*)_sql $$< >$$@.tmp && mv $$@.tmp $$@
endef
$(eval $(call driver,pg,postgresql,))
$(eval $(call driver,sqlite,sqlite,))

# MySQL/MariaDB: built where MariaDB Connector/C (libmariadb-dev) is installed.
MYSQL_CFLAGS := $(shell pkg-config --cflags libmariadb 2>/dev/null || mariadb_config --cflags 2>/dev/null)
MYSQL_LIBS := $(shell pkg-config --libs libmariadb 2>/dev/null || mariadb_config --libs 2>/dev/null)
ifneq ($(MYSQL_LIBS),)
$(eval $(call driver,mysql,mysql,$(MYSQL_CFLAGS)))
CFLAGS  += -DSN_HAVE_MYSQL
DB_LIBS += $(MYSQL_LIBS)
endif

# The clients of SPEC §8.2, each built where its library is installed (else its constructor
# names the Debian package): libcurl, hiredis, the NATS C client, libmosquitto, librdkafka.
OBJS    += $(BUILD)/clients.o $(BUILD)/http.o $(BUILD)/redis.o $(BUILD)/nats.o $(BUILD)/mqtt.o $(BUILD)/kafka.o
CURL_CFLAGS := $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS := $(shell pkg-config --libs libcurl 2>/dev/null)
HIREDIS_CFLAGS := $(shell pkg-config --cflags hiredis 2>/dev/null)
HIREDIS_LIBS := $(shell pkg-config --libs hiredis 2>/dev/null)
NATS_CFLAGS := $(shell pkg-config --cflags libnats 2>/dev/null)
NATS_LIBS := $(shell pkg-config --libs libnats 2>/dev/null)
MOSQUITTO_CFLAGS := $(shell pkg-config --cflags libmosquitto 2>/dev/null)
MOSQUITTO_LIBS := $(shell pkg-config --libs libmosquitto 2>/dev/null)
RDKAFKA_CFLAGS := $(shell pkg-config --cflags rdkafka 2>/dev/null)
RDKAFKA_LIBS := $(shell pkg-config --libs rdkafka 2>/dev/null)
CLIENT_CFLAGS :=
$(foreach c,CURL HIREDIS NATS MOSQUITTO RDKAFKA,$(if $($(c)_LIBS),$(eval CLIENT_CFLAGS += -DSN_HAVE_$(c) $($(c)_CFLAGS))$(eval DB_LIBS += $($(c)_LIBS))))

all: $(HOST) $(MODULE)

# What the build is configured with: the compiler, its flags, every optional library's
# *_CFLAGS and *_LIBS (found by name, so a new one is tracked without a line here) and the
# objects linked. Rewritten only when that changes, and every object and link depends on
# it: a build made before libmariadb-dev was installed (make demo, then make check), or with
# other flags, is redone instead of linking stale objects.
CONFIG = CC=$(CC) CFLAGS=$(CFLAGS) LDFLAGS=$(LDFLAGS) \
  $(foreach v,$(sort $(filter %_CFLAGS %_LIBS,$(.VARIABLES))),$(v)=$($(v))) OBJS=$(OBJS)

$(CONFIG_FILE): FORCE
	@mkdir -p $(BUILD)
	@printf '%s\n' '$(subst ','\'',$(CONFIG))' | cmp -s - $@ \
	  || printf '%s\n' '$(subst ','\'',$(CONFIG))' >$@

$(BUILD)/%.o: src/%.c $(HEADERS) src/clients.h $(CONFIG_FILE)
	$(CC) $(CFLAGS) $(CLIENT_CFLAGS) -c -o $@ $<

$(BUILD)/%-sql.o: $(BUILD)/%-sql.c $(CONFIG_FILE)
	$(CC) $(CFLAGS) -c -o $@ $<

$(HOST): $(BUILD)/host.o $(OBJS) $(CONFIG_FILE)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) -llua5.4 $(DB_LIBS) -lm

# The module takes its Lua symbols from the interpreter that loads it.
$(MODULE): $(OBJS) $(CONFIG_FILE)
	@mkdir -p $(BUILD)/sqlnotify
	$(CC) $(LDFLAGS) -shared -o $@ $(filter %.o,$^) $(DB_LIBS)

check:
	@SANITIZE="$(SANITIZE)" BUILD="$(BUILD)" sh tools/check.sh

# The first command on a fresh machine: install what the build needs, then build and run.
demo:
	@sh tools/deps.sh build
	@$(MAKE) --no-print-directory all
	@sh tools/demo.sh $(HOST)

demo-live:
	@SANITIZE="$(SANITIZE)" sh tools/demo-live.sh $(BUILD)

bench: all
	@sh bench/run.sh $(BUILD)

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/sqlnotify $(DESTDIR)$(LUADIR)/sqlnotify
	install -m 755 $(HOST) $(DESTDIR)$(BINDIR)/sqlnotify-lua
	install -m 755 $(MODULE) $(DESTDIR)$(LIBDIR)/sqlnotify/core.so
	install -m 644 lua/sqlnotify/*.lua $(DESTDIR)$(LUADIR)/sqlnotify/

PG_CONFIG ?= pg_config
install-pgext:
	$(MAKE) -C pgext PG_CONFIG="$(PG_CONFIG)" with_llvm=no install

clean:
	rm -rf build build-*
	$(MAKE) -s -C pgext clean PG_CONFIG="$(PG_CONFIG)" 2>/dev/null || true

.PHONY: all check demo demo-live bench install install-pgext clean FORCE
