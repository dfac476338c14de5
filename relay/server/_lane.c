/* The room's UDP port, and its members' WebSocket connections, read in C: a member's DATA packet
 * of SENDs (and PINGs, answered here) is opened, checked, fanned out, sealed and sent here,
 * without a Python call per datagram or frame (docs/architecture.md, "The C part"). Everything
 * else is handed to the room as it was before.
 *
 * Why: in the deployed shape (a relay process per room, a message per client packet) what a
 * packet costs is mostly the Python interpreter woken for it, whatever it then does; a process
 * whose event loop calls this for its readable socket and stays in C costs about what a C
 * relay of its own costs (loadtest/floor_relay.py's measurements, docs/architecture.md).
 *
 *     Lane(fd, room, counters, punt, punt_opened, max_payload, max_plaintext, hooks=(), fanout_bounds=None)
 *     lane.read()                        the event loop's reader for fd; a pass
 *     lane.offer(session, member, path, name) -> bool
 *
 * The room (relay/server/room.py) stays the one owner of the state: a session's entry here only
 * keeps what C needs at hand (its keys' Sealer and Opener, its member's token buckets, its
 * packed address, its MESSAGE prefix), with the room's objects it was made from, and each use
 * checks against those objects that nothing changed (the session still the room's, still its
 * member's, on the same validated path and address; its member not over a rate limit nor
 * muted). A datagram that is not a DATA packet of such a session, a plaintext with anything
 * but SENDs and PINGs of the plain shape, a message over a limit, a recipient that is not such a
 * session: all go to the room, untouched (`punt(data, addr, now)`), or once opened with its plaintext
 * (`punt_opened(session, data, plaintext, counter, addr, now)`), so the room's rules apply to
 * them exactly as before and the room's tests keep describing the relay. A packet is taken here
 * whole or not at all: its buckets are spent, its messages queued, only when every check passed.
 *
 * Order: once the room holds output of its own for the pass (it scheduled a flush), the rest of
 * the pass goes to the room, so no sender's later packet overtakes an earlier one. The pass's
 * output leaves at the end of the read, packed per recipient as the room packs it (messages in
 * order, as many to a plaintext as fit), in one sendmmsg. A full socket buffer drops the rest
 * (UDP: counted as the room counts it, drops "udp_send_buffer").
 *
 * `fanout_bounds`: relay_fanout_seconds' bucket bounds, so a read's flush is counted in
 * `counters.fanout_buckets` and `fanout_ns` without a Python call (None: Counters.observe_fanout).
 * `hooks`: (object, attribute, callable) each; at the end of a read, callable(now) where
 * now >= object.attribute (what the relay runs at the end of a pass: its rides, its pacer). An
 * object that is relay/server/_pacing.c's Pacer is read in C, by its `lane_due` (the attribute
 * app.py names): when it is unpaced the lane takes its CPU reading itself and calls the callable
 * only if that starts the pace.
 *
 * WebSocket members (`ws_limits(...)` once, then `ws_offer(session, member, fd, conn, transport)`
 * per member, relay/server/links.py's WsConnection): once a native member on a plain (not TLS)
 * connection has joined, its connection stops reading and the loop calls `ws_read(entry)` when
 * a dup of its socket is readable. Masked, unfragmented binary frames are unmasked here and
 * their payloads taken as datagrams are (`ws_packet`: the session's own, no address to check);
 * a payload the lane does not relay goes to the connection as it would have read it
 * (`conn.lane_binary`); any other frame (a ping, a close, a fragment, text) or the stream's end
 * hands the reading back with the bytes from there on (`conn.lane_hand_back`), for good. A
 * WebSocket recipient's packets are framed here and written to its socket when its transport
 * holds nothing queued (asked only after the connection wrote through it: `Entry.queued`), else
 * through the transport, behind what it queued. Each socket is its own read, so their output
 * leaves once a pass, at its end (`ws_flush`, scheduled by the first read of the pass), and the
 * WebSocket hooks run then; or at the read's end, where no other member's socket has anything to
 * read and the relay does not pace (`ws_flush_now`). A ping or a pong from a member is handed to
 * its connection (`conn.lane_control(opcode, payload, now)`) and the reading goes on here.
 *
 * GS2 clients (`gs2_limits(key, started, max_size)` once, then `ws_offer(..., recipient)` with the
 * client's wire.Recipient, relay/server/gs2.py): once a GS2 client has joined, its
 * connection is read here too. A Container of the plain shape (a BinaryMessage whose HMAC with
 * the room key checks, `gs2_packet`) is relayed as a SEND would be; anything else (another type,
 * a bad signature, a field the parse here does not expect) goes to the connection as it would
 * have read it, whose parser decides. A GS2 recipient's messages leave as Containers built here,
 * numbered from its Recipient's `seq`, as wire.Recipient numbers them.
 *
 * The GIL is held throughout: the sockets are non-blocking and a read is at most BATCH datagrams
 * or what one recv() returns.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_CTX: an HMAC's key states are copied by assignment */
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "_pacing.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <structmember.h>

#include "../protocol/_aead.h"
#include "_ratelimit.h"

#define BATCH 32          /* datagrams a read takes (uvloop's own UDP reads take as many) */
#define SID_KEYS 32       /* session ids' ints kept (`sid_key`), a power of two */
#define BUFSIZE 2048      /* over every limit: a longer datagram is handed on truncated, to be dropped */
#define HEADER_SIZE 16
#define TAG_SIZE 16
#define VERSION 1         /* PROTOCOL_VERSION */
#define TYPE_DATA 3       /* PacketType.DATA */
#define MAX_PACKET 1200   /* UDP_MAX_PACKET */
#define SEND_CODE 2       /* ClientMsg.SEND */
#define PING_CODE 4       /* ClientMsg.PING */
#define PONG_CODE 21      /* RelayMsg.PONG */
#define PONG_MAX 20       /* [PONG, uint64, uint64] in msgpack */
#define MAX_MESSAGES 64   /* SENDs and PINGs in one packet taken here (more: the room's) */
#define MAX_TARGETS 64    /* targets of one SEND taken here */
#define MAX_RECIPIENTS 1024 /* deliveries planned for one packet */
#define SEND_CHUNK 256    /* datagrams per sendmmsg */
#define PREFIX_MAX 16
#define GS2_BINARY_MESSAGE 805306368u /* Container.BINARY_MESSAGE (relay/protocol/gs2/message.proto) */
#define GS2_OVERHEAD 160  /* a Container and its frame beyond a MESSAGE's bytes, at most */

static AeadApi *aead;
static PyTypeObject *bucket_type;
static PacerApi *pacers; /* relay/server/_pacing.c's; NULL where it is not built */
/* An attribute the lane reads or writes on the room's objects, by name; where the object's type
 * keeps it in a __slots__ slot (Session, Member, UdpPath, Counters), the slot's offset, found once
 * per type, so a read is a load (PyObject_GetAttr's type lookup and descriptor call, met cold at
 * each wake-up, were a tenth of a relay process's CPU in `perf`). */
typedef struct {
    PyObject *name;
    PyTypeObject *type; /* the type `offset` is of (held) */
    Py_ssize_t offset;  /* 0: not a slot of that type: PyObject_GetAttr */
} Attr;

static Attr s_sid, s_member, s_session, s_path, s_validated, s_addr, s_muted_until, s_over_since, s_opener, s_sealer, s_msg_bucket, s_byte_bucket, s_prefix, s_sessions, s_members, s_flush_scheduled, s_held, s_shed_optional, s_udp_backlogged, s_closed, s_last_seen, s_last_activity, s_packets_in, s_bytes_in, s_messages_in, s_messages_out, s_packets_out, s_bytes_out, s_drops, s_observe_fanout, s_fanout_buckets, s_fanout_ns, s_decrypt_failures;
static Attr s_write, s_get_write_buffer_size, s_is_closing, s_overflow, s_lane_binary, s_lane_hand_back, s_lane_control, s_seq_cell;

/* ---- an entry: one session's handles ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD uint32_t sid;
    PyObject *session, *member, *path, *addr; /* the room's objects it was made from */
    PyObject *opener, *sealer;                 /* _aead's */
    TokenBucketObject *msgs, *bytes;           /* the member's */
    unsigned char prefix[PREFIX_MAX];
    int prefix_len;
    struct sockaddr_storage name;
    socklen_t namelen;
    /* the pass's output: encoded messages, back to back, and their lengths */
    unsigned char *out;
    Py_ssize_t out_len, out_cap;
    Py_ssize_t *lens;
    Py_ssize_t nlens, lens_cap;
    int dirty;
    /* a WebSocket member's (kind WS): the connection's socket (a dup the lane reads; -1 once let
     * go), the connection (hand-backs) and its transport (writes behind queued ones), and the
     * bytes read that are not yet a whole frame */
    int kind, fd;
    /* its transport may hold bytes queued, so the lane asks it (`get_write_buffer_size`) before it
     * writes to the socket itself: set where the entry is made, by the lane's own writes through
     * the transport and by the connection's (its `queued` attribute); cleared where the
     * transport answered 0. Asking at every write was 5% of a WebSocket relay's CPU in the
     * deployed shape, and the connection writes through its transport a few times a second at
     * most (pongs, the room's own events) */
    int queued;
    PyObject *conn, *transport;
    unsigned char *in;
    Py_ssize_t in_len, in_cap;
    /* a GS2 client's (kind GS2): the last sequence number of its Containers, in its wire.Recipient's
     * `seq_cell` (an array("I") of one, held through `seq_view`): read and written in place, where
     * the Recipient's attribute cost a cold object and an int made per flush (3% of a GS2 relay) */
    uint32_t *seq;
    Py_buffer seq_view;
    /* a GS2 client's: each queued message's HMAC (32 bytes, in `lens`' order), made once per message
     * when it was queued rather than once per recipient at the flush */
    unsigned char *macs;
    Py_ssize_t macs_cap;
    double seen_at; /* the read that last set its session's last_seen (a read's packets share one time) */
} Entry;

enum { KIND_UDP = 0, KIND_WS = 1, KIND_GS2 = 2 }; /* relay/server/transport.py's, counters' index */

static void Entry_dealloc(Entry *self) {
    Py_XDECREF(self->session);
    Py_XDECREF(self->member);
    Py_XDECREF(self->path);
    Py_XDECREF(self->addr);
    Py_XDECREF(self->opener);
    Py_XDECREF(self->sealer);
    Py_XDECREF(self->msgs);
    Py_XDECREF(self->bytes);
    PyMem_Free(self->out);
    PyMem_Free(self->lens);
    Py_XDECREF(self->conn);
    Py_XDECREF(self->transport);
    if (self->seq != NULL) PyBuffer_Release(&self->seq_view);
    PyMem_Free(self->in);
    PyMem_Free(self->macs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Entry_members[] = {
    {"queued", T_INT, offsetof(Entry, queued), 0,
     "1 once its connection wrote through its transport: the lane asks the transport what it queued"},
    {NULL},
};

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.server._lane.Entry",
    .tp_basicsize = sizeof(Entry),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A session's handles in the lane (internal).",
    .tp_dealloc = (destructor)Entry_dealloc,
    .tp_members = Entry_members,
};

/* Room for `size` more bytes of one message at the end of e's output, counted as written: where
 * to write them; NULL out of memory (nothing changed) */
static unsigned char *entry_extend(Entry *e, Py_ssize_t size) {
    if (e->out_len + size > e->out_cap) {
        Py_ssize_t cap = e->out_cap ? e->out_cap : 2048;
        while (cap < e->out_len + size) cap *= 2;
        unsigned char *grown = PyMem_Realloc(e->out, cap);
        if (grown == NULL) return NULL;
        e->out = grown, e->out_cap = cap;
    }
    if (e->nlens == e->lens_cap) {
        Py_ssize_t cap = e->lens_cap ? 2 * e->lens_cap : 16;
        Py_ssize_t *grown = PyMem_Realloc(e->lens, cap * sizeof(Py_ssize_t));
        if (grown == NULL) return NULL;
        e->lens = grown, e->lens_cap = cap;
    }
    unsigned char *at = e->out + e->out_len;
    e->out_len += size;
    e->lens[e->nlens++] = size;
    return at;
}

/* A MESSAGE for e: the sender's prefix, then `data` as msgpack bin */
static int entry_append(Entry *e, const unsigned char *prefix, int prefix_len, const unsigned char *data,
                        Py_ssize_t n) {
    unsigned char head[5];
    int hlen;
    if (n < 256) {
        head[0] = 0xC4, head[1] = (unsigned char)n, hlen = 2;
    } else if (n < 65536) {
        head[0] = 0xC5, head[1] = (unsigned char)(n >> 8), head[2] = (unsigned char)n, hlen = 3;
    } else {
        head[0] = 0xC6, hlen = 5;
        for (int i = 0; i < 4; i++) head[1 + i] = (unsigned char)(n >> (24 - 8 * i));
    }
    unsigned char *at = entry_extend(e, prefix_len + hlen + n);
    if (at == NULL) return -1;
    memcpy(at, prefix, prefix_len);
    memcpy(at + prefix_len, head, hlen);
    memcpy(at + prefix_len + hlen, data, n);
    return 0;
}

/* ---- the lane ------------------------------------------------------------------------------ */

/* relay/server/metrics.py's Counters' arrays of 64-bit integers the lane adds to (`count_at`) */
enum { C_PACKETS_IN, C_BYTES_IN, C_MESSAGES_IN, C_MESSAGES_OUT, C_PACKETS_OUT, C_BYTES_OUT, C_FANOUT_BUCKETS, C_FANOUT_NS,
       NCOUNTS };

typedef struct {
    uint32_t sid;
    PyObject *key; /* the int sid, or NULL */
} SidKey;

typedef struct {
    PyObject_HEAD int fd;
    PyObject *room, *counters, *punt, *punt_opened, *hooks;
    /* the counters' arrays (`hold_counts`), held through their buffers for the lane's life */
    Py_buffer counts[NCOUNTS];
    int counts_held; /* how many of them: NCOUNTS, or none is counted */
    PyObject *by_sid;     /* sid -> Entry */
    PyObject *by_session; /* session -> Entry */
    SidKey sid_keys[SID_KEYS]; /* the ints session ids are looked up by (`sid_key`) */
    Py_ssize_t max_payload, max_plaintext;
    Entry **dirty;
    Py_ssize_t ndirty, dirty_cap;
    unsigned char *bufs;  /* BATCH x BUFSIZE */
    struct mmsghdr in[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage names[BATCH];
    unsigned char *packets; /* the pass's sealed packets, back to back */
    Py_ssize_t packets_cap;
    unsigned long long fast, punted; /* datagrams taken here, and handed to the room */
    /* packets, bytes and messages in of a read's taken packets, by transport kind, not yet added
     * to the counters: added once a read (`count_pending`), before anything else may read them */
    long long pending[3][3];
    int pending_any;
    int reading;                     /* in read(): close() waits for its end, a nested read() is refused */
    int closing;                     /* close() came during read() */
    PyObject *stop_type, *stop_value, *stop_tb; /* a KeyboardInterrupt or SystemExit met in read() */
    PyObject *on_full;               /* called when the socket's send buffer is full */
    double bounds[16];               /* relay_fanout_seconds' bucket bounds (metrics.FANOUT_BOUNDS) */
    int nbounds;
    double batch_start;
    double active_at; /* the read that last set the room's last_activity */
    Py_ssize_t ws_max_payload, ws_max_plaintext, ws_send_buffer; /* 0: no WebSocket members here */
    PyObject *ws_hooks;    /* what runs at the end of a pass's WebSocket reads, as `hooks` at a datagram read's */
    PyObject *ws_schedule; /* schedules ws_flush() for the end of the event loop's pass */
    int ws_flush_pending;
    double ws_first;       /* when the pass's first WebSocket read was */
    /* the members' sockets in an epoll set of the lane's own (`ws_flush_now`): made at the first
     * ws_offer; `ws_unwatched`, a socket it could not add (every read then waits for the pass) */
    int ws_epfd, ws_ep_made, ws_unwatched;
    /* GS2 clients (gs2_limits): the room key's HMAC-SHA256 inner and outer states, when the room
     * started (a Container's lifetime), the largest message a client may send */
    SHA256_CTX gs2_inner, gs2_outer;
    double gs2_started;
    Py_ssize_t gs2_max_size; /* 0: no GS2 clients here */
    unsigned char *gs2_value; /* where a message's Container value is built to be signed */
    Py_ssize_t gs2_value_cap;
    /* a pass's buffers, kept from one pass to the next (a read is never nested: `reading`) */
    void *pass_plan;              /* a Plan */
    unsigned char *pass_plain;    /* BUFSIZE */
    struct mmsghdr *out_headers;  /* flush's, out_cap each */
    struct iovec *out_vectors;
    Py_ssize_t out_cap;
} Lane;

static int hold_counts(Lane *self, PyObject *counters);
static void release_counts(Lane *self);

/* `clock`'s time in seconds, as Python's time module reads it */
static double clock_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double monotonic_now(void) { return clock_seconds(CLOCK_MONOTONIC); }

static int Lane_init(Lane *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"fd",          "room", "counters", "punt",          "punt_opened", "max_payload",
                            "max_plaintext", "hooks", "fanout_bounds", "on_full", NULL};
    int fd;
    PyObject *room, *counters, *punt, *punt_opened, *hooks = NULL, *bounds = NULL, *on_full = Py_None;
    Py_ssize_t max_payload, max_plaintext;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOOOOnn|OOO", names, &fd, &room, &counters, &punt, &punt_opened,
                                     &max_payload, &max_plaintext, &hooks, &bounds, &on_full))
        return -1;
    if (self->reading) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is reading");
        return -1;
    }
    if (fd < 0 || max_payload < 0 || max_plaintext <= 0) {
        PyErr_SetString(PyExc_ValueError, "a descriptor and positive limits");
        return -1;
    }
    self->nbounds = 0;
    self->active_at = -1.0;
    if (bounds != NULL) { /* ascending seconds, as bisect_left reads them */
        PyObject *seq = PySequence_Fast(bounds, "fanout_bounds: a sequence of seconds");
        if (seq == NULL) return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        for (Py_ssize_t i = 0; i < n && i < 16; i++) {
            double bound = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
            if ((bound == -1.0 && PyErr_Occurred()) || (i && bound < self->bounds[i - 1])) {
                Py_DECREF(seq);
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "fanout_bounds: ascending");
                return -1;
            }
            self->bounds[self->nbounds++] = bound;
        }
        Py_DECREF(seq);
        if (n > 16) {
            PyErr_SetString(PyExc_ValueError, "fanout_bounds: 16 at most");
            return -1;
        }
    }
    hooks = hooks == NULL ? PyTuple_New(0) : PySequence_Tuple(hooks); /* a new reference from here */
    if (hooks == NULL) return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(hooks); i++) {
        PyObject *hook = PyTuple_GET_ITEM(hooks, i);
        if (!PyTuple_Check(hook) || PyTuple_GET_SIZE(hook) != 3 || !PyUnicode_Check(PyTuple_GET_ITEM(hook, 1)) ||
            !PyCallable_Check(PyTuple_GET_ITEM(hook, 2))) {
            Py_DECREF(hooks);
            PyErr_SetString(PyExc_TypeError, "hooks: (object, attribute, callable) each");
            return -1;
        }
    }
    if (hold_counts(self, counters) < 0) {
        Py_DECREF(hooks);
        return -1;
    }
    if (self->bufs == NULL) {
        self->bufs = PyMem_Malloc(BATCH * BUFSIZE);
        if (self->bufs == NULL) {
            Py_DECREF(hooks);
            PyErr_NoMemory();
            return -1;
        }
    }
    PyObject *by_sid = PyDict_New(), *by_session = PyDict_New();
    if (by_sid == NULL || by_session == NULL) {
        Py_XDECREF(by_sid);
        Py_XDECREF(by_session);
        Py_DECREF(hooks);
        return -1;
    }
    Py_INCREF(room), Py_INCREF(counters), Py_INCREF(punt), Py_INCREF(punt_opened), Py_INCREF(on_full);
    Py_XSETREF(self->hooks, hooks);
    Py_XSETREF(self->on_full, on_full);
    Py_XSETREF(self->room, room);
    Py_XSETREF(self->counters, counters);
    Py_XSETREF(self->punt, punt);
    Py_XSETREF(self->punt_opened, punt_opened);
    Py_XSETREF(self->by_sid, by_sid);
    Py_XSETREF(self->by_session, by_session);
    self->fd = fd;
    self->max_payload = max_payload;
    self->max_plaintext = max_plaintext;
    return 0;
}

static void clear_dirty(Lane *self) {
    for (Py_ssize_t i = 0; i < self->ndirty; i++) {
        Entry *e = self->dirty[i];
        e->dirty = 0, e->out_len = 0, e->nlens = 0;
        Py_DECREF(e);
    }
    self->ndirty = 0;
}

static int Lane_traverse(Lane *self, visitproc visit, void *arg) {
    Py_VISIT(self->room);
    Py_VISIT(self->counters);
    Py_VISIT(self->punt);
    Py_VISIT(self->punt_opened);
    Py_VISIT(self->hooks);
    Py_VISIT(self->on_full);
    Py_VISIT(self->by_sid);
    Py_VISIT(self->by_session);
    Py_VISIT(self->ws_hooks);
    Py_VISIT(self->ws_schedule);
    for (int i = 0; i < self->counts_held; i++) Py_VISIT(self->counts[i].obj);
    return 0;
}

static int Lane_clear(Lane *self) {
    clear_dirty(self);
    Py_CLEAR(self->room);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->punt);
    Py_CLEAR(self->punt_opened);
    Py_CLEAR(self->hooks);
    Py_CLEAR(self->on_full);
    Py_CLEAR(self->by_sid);
    Py_CLEAR(self->by_session);
    for (int i = 0; i < SID_KEYS; i++) Py_CLEAR(self->sid_keys[i].key);
    Py_CLEAR(self->ws_hooks);
    Py_CLEAR(self->ws_schedule);
    release_counts(self);
    if (self->ws_ep_made) {
        close(self->ws_epfd);
        self->ws_ep_made = 0;
    }
    return 0;
}

static void Lane_dealloc(Lane *self) {
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    Py_CLEAR(self->stop_type);
    Py_CLEAR(self->stop_value);
    Py_CLEAR(self->stop_tb);
    PyMem_Free(self->dirty);
    PyMem_Free(self->bufs);
    PyMem_Free(self->packets);
    PyMem_Free(self->gs2_value);
    PyMem_Free(self->pass_plan);
    PyMem_Free(self->pass_plain);
    PyMem_Free(self->out_headers);
    PyMem_Free(self->out_vectors);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- small helpers ------------------------------------------------------------------------- */

static void resolve(PyTypeObject *type, Attr *attr) {
    Py_INCREF(type);
    Py_XSETREF(attr->type, type);
    attr->offset = 0;
    PyObject *descr = PyObject_GetAttr((PyObject *)type, attr->name); /* a slot's: its member descriptor */
    if (descr == NULL) {
        PyErr_Clear();
        return;
    }
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
        if (def->type == T_OBJECT_EX && !(def->flags & READONLY) && def->offset > 0) attr->offset = def->offset;
    }
    Py_DECREF(descr);
}

/* obj.<attr>, a new reference */
static PyObject *get_attr(PyObject *obj, Attr *attr) {
    PyTypeObject *type = Py_TYPE(obj);
    if (type != attr->type) resolve(type, attr);
    if (attr->offset) {
        PyObject *value = *(PyObject **)((char *)obj + attr->offset);
        if (value != NULL) {
            Py_INCREF(value);
            return value;
        }
    }
    return PyObject_GetAttr(obj, attr->name); /* not a slot, or unset: Python's own answer */
}

/* obj.<attr> = value */
static int set_attr(PyObject *obj, Attr *attr, PyObject *value) {
    PyTypeObject *type = Py_TYPE(obj);
    if (type != attr->type) resolve(type, attr);
    if (attr->offset) {
        PyObject **slot = (PyObject **)((char *)obj + attr->offset);
        Py_INCREF(value);
        Py_XSETREF(*slot, value);
        return 0;
    }
    return PyObject_SetAttr(obj, attr->name, value);
}

/* obj.<attr> is `expected` (identity); -1 on an error */
static int attr_is(PyObject *obj, Attr *attr, PyObject *expected) {
    PyObject *value = get_attr(obj, attr);
    if (value == NULL) return -1;
    int same = value == expected;
    Py_DECREF(value);
    return same;
}

/* a new reference's value as a double (the reference let go); -1 on an error, or if it is NULL */
static int to_double(PyObject *value, double *out) {
    if (value == NULL) return -1;
    *out = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int attr_double(PyObject *obj, Attr *attr, double *out) { return to_double(get_attr(obj, attr), out); }

static int attr_true(PyObject *obj, Attr *attr) {
    PyObject *value = get_attr(obj, attr);
    if (value == NULL) return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* Hooks' due times (a type and attribute each, named by the relay: the rides', the pacer's), kept
 * as the room's attributes are: read at the end of every pass, by name they cost a type lookup
 * met cold at each wake-up (4% of a relay process's CPU in the deployed shape's `perf`). */
#define HOOK_ATTRS 8
static Attr hook_attrs[HOOK_ATTRS];

/* obj.<name> as a float */
static int named_double(PyObject *obj, PyObject *name, double *out) {
    for (int i = 0; i < HOOK_ATTRS; i++) {
        Attr *attr = &hook_attrs[i];
        if (attr->name == NULL) { /* a type and name not met before: kept from here on */
            attr->name = Py_NewRef(name);
            resolve(Py_TYPE(obj), attr);
        }
        if (attr->type == Py_TYPE(obj) && (attr->name == name || PyUnicode_Compare(attr->name, name) == 0))
            return attr_double(obj, attr, out);
    }
    return to_double(PyObject_GetAttr(obj, name), out); /* more than were kept */
}

/* counters.<counts>[index] += n, in place: relay/server/metrics.py's Counters keeps its counts in
 * arrays of 64-bit integers, held by the lane through their buffers (`hold_counts`), so an add
 * is a store (in lists each add made an int and freed one, met cold at every wake-up, and found
 * the list by name). Their lengths were checked when they were held, and cannot change since. */
static inline void count_at(Lane *self, int counts, Py_ssize_t index, long long n) {
    if (self->counts_held == NCOUNTS) ((long long *)self->counts[counts].buf)[index] += n;
}

static void release_counts(Lane *self) {
    for (int i = 0; i < self->counts_held; i++) PyBuffer_Release(&self->counts[i]);
    self->counts_held = 0;
}

/* Holds the buffers of `counters`' arrays (the order of C_PACKETS_IN...): an array('q') each, of
 * a count per transport kind, per fan-out bucket (the bounds given and one over them), or one */
static int hold_counts(Lane *self, PyObject *counters) {
    Attr *names[NCOUNTS] = {&s_packets_in,  &s_bytes_in,  &s_messages_in,     &s_messages_out,
                            &s_packets_out, &s_bytes_out, &s_fanout_buckets, &s_fanout_ns};
    release_counts(self);
    for (int i = 0; i < NCOUNTS; i++) {
        PyObject *counts = get_attr(counters, names[i]);
        if (counts == NULL) break;
        Py_buffer *view = &self->counts[i];
        int held = PyObject_GetBuffer(counts, view, PyBUF_WRITABLE | PyBUF_FORMAT) == 0;
        Py_DECREF(counts);
        if (held) self->counts_held = i + 1;
        Py_ssize_t least = i < C_FANOUT_BUCKETS ? 3 : i == C_FANOUT_BUCKETS ? self->nbounds + 1 : 1;
        if (!held || view->itemsize != (Py_ssize_t)sizeof(long long) || view->format == NULL ||
            strcmp(view->format, "q") != 0 || view->len / view->itemsize < least) {
            PyErr_Format(PyExc_TypeError, "counters.%U: an array('q') of %zd at least", names[i]->name, least);
            break;
        }
    }
    if (self->counts_held == NCOUNTS) return 0;
    release_counts(self);
    return -1;
}

/* A read's taken packets into the counters (packets_in, bytes_in, messages_in of their kind),
 * as the room counts each of its packets: once a read, and before the room or a hook runs. */
static void count_pending(Lane *self) {
    if (!self->pending_any) return;
    self->pending_any = 0;
    for (int kind = 0; kind < 3; kind++) {
        long long *n = self->pending[kind];
        if (n[0]) {
            count_at(self, C_PACKETS_IN, kind, n[0]);
            count_at(self, C_BYTES_IN, kind, n[1]);
            count_at(self, C_MESSAGES_IN, kind, n[2]);
        }
        n[0] = n[1] = n[2] = 0;
    }
}

/* obj.<attr> += amount (a new reference, let go) */
static int add_to(PyObject *obj, Attr *attr, PyObject *amount) {
    if (amount == NULL) return -1;
    PyObject *old = get_attr(obj, attr), *sum = old ? PyNumber_Add(old, amount) : NULL;
    int rc = sum ? set_attr(obj, attr, sum) : -1;
    Py_XDECREF(old);
    Py_XDECREF(sum);
    Py_DECREF(amount);
    return rc;
}

/* counters.drops[reason] += n */
static int count_drop(PyObject *counters, const char *reason, long long n) {
    PyObject *drops = get_attr(counters, &s_drops);
    if (drops == NULL) return -1;
    PyObject *key = PyUnicode_FromString(reason), *old = key ? PyObject_GetItem(drops, key) : NULL;
    PyObject *add = old ? PyLong_FromLongLong(n) : NULL, *sum = add ? PyNumber_Add(old, add) : NULL;
    int rc = sum ? PyObject_SetItem(drops, key, sum) : -1;
    Py_XDECREF(sum);
    Py_XDECREF(add);
    Py_XDECREF(old);
    Py_XDECREF(key);
    Py_DECREF(drops);
    return rc;
}

/* An error where the room would have counted an internal error: counted, the exception handed
 * to sys.unraisablehook, the lane goes on. A KeyboardInterrupt or SystemExit (a BaseException
 * that is not an Exception) instead ends the read and is raised from it. */
static void internal_error(Lane *self, const char *where) {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        if (self->stop_type == NULL)
            PyErr_Fetch(&self->stop_type, &self->stop_value, &self->stop_tb);
        else
            PyErr_Clear();
        return;
    }
    PyObject *context = PyUnicode_FromFormat("relay/server/_lane.c (%s)", where);
    PyErr_WriteUnraisable(context);
    Py_XDECREF(context);
    PyErr_Clear();
    if (self->counters != NULL && count_drop(self->counters, "internal_error", 1) < 0) PyErr_Clear();
}

/* read() must stop: the lane was closed, or an interrupt is to be raised */
static inline int stopped(Lane *self) { return self->closing || self->stop_type != NULL; }

static int same_name(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return 0;
}

/* the address as asyncio gives it: (host, port) or (host, port, flowinfo, scope_id) */
static PyObject *address_of(const struct sockaddr_storage *name) {
    char host[INET6_ADDRSTRLEN];
    if (name->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)name;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host) == NULL) return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (name->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)name;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host) == NULL) return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

static inline uint64_t be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* ---- offer ---------------------------------------------------------------------------------- */

/* A new entry for the session of `member` (its keys' C pieces, its member's buckets and MESSAGE
 * prefix), or NULL: with an exception on an error, else (not the C pieces: RELAY_PURE_PYTHON's, a
 * test's) the session is the room's alone. `keyed`: 0 for a session without keys (a GS2
 * client's: its link encodes, the lane builds its Containers), which then has none. */
static Entry *make_entry(PyObject *session, PyObject *member, uint32_t sid, int keyed) {
    PyObject *opener = get_attr(session, &s_opener), *sealer = NULL, *msgs = NULL, *bytes = NULL, *prefix = NULL;
    Entry *e = NULL;
    if (opener == NULL || (sealer = get_attr(session, &s_sealer)) == NULL ||
        (msgs = get_attr(member, &s_msg_bucket)) == NULL || (bytes = get_attr(member, &s_byte_bucket)) == NULL ||
        (prefix = get_attr(member, &s_prefix)) == NULL)
        goto done;
    if (keyed ? Py_TYPE(opener) != aead->opener_type || Py_TYPE(sealer) != aead->sealer_type
              : opener != Py_None || sealer != Py_None)
        goto done;
    if (Py_TYPE(msgs) != bucket_type || Py_TYPE(bytes) != bucket_type || !PyBytes_Check(prefix) ||
        PyBytes_GET_SIZE(prefix) > PREFIX_MAX)
        goto done;
    e = PyObject_New(Entry, &EntryType);
    if (e == NULL) goto done;
    e->sid = sid;
    Py_INCREF(session), Py_INCREF(member), Py_INCREF(Py_None), Py_INCREF(Py_None);
    e->session = session, e->member = member, e->path = Py_None, e->addr = Py_None;
    if (!keyed) {
        Py_CLEAR(opener);
        Py_CLEAR(sealer);
    }
    e->opener = opener, e->sealer = sealer;
    e->msgs = (TokenBucketObject *)msgs, e->bytes = (TokenBucketObject *)bytes;
    opener = sealer = msgs = bytes = NULL; /* the entry's now */
    e->prefix_len = (int)PyBytes_GET_SIZE(prefix);
    memcpy(e->prefix, PyBytes_AS_STRING(prefix), e->prefix_len);
    memset(&e->name, 0, sizeof e->name);
    e->namelen = 0;
    e->out = NULL, e->out_len = e->out_cap = 0;
    e->lens = NULL, e->nlens = e->lens_cap = 0;
    e->dirty = 0;
    e->kind = KIND_UDP, e->fd = -1, e->queued = 1;
    e->seq = NULL, e->seq_view.obj = NULL;
    e->conn = e->transport = NULL, e->in = NULL, e->in_len = e->in_cap = 0;
    e->macs = NULL, e->macs_cap = 0;
    e->seen_at = -1.0;
done:
    Py_XDECREF(opener);
    Py_XDECREF(sealer);
    Py_XDECREF(msgs);
    Py_XDECREF(bytes);
    Py_XDECREF(prefix);
    return e;
}

/* The ints session ids are looked up by in the lane's dicts and the room's, kept by id so that a
 * member's packets make none: an id over 256 is no cached small int, and making and freeing one at
 * each packet was 3% of a deployed relay's samples in `perf` (docs/architecture.md). An offer keeps
 * the session's own int, the room's key for it. */
static SidKey *sid_slot(Lane *self, uint32_t sid) { return &self->sid_keys[(sid ^ (sid >> 16)) & (SID_KEYS - 1)]; }

/* `sid`, the int `value` (a session's own), kept as its key */
static void keep_sid(Lane *self, PyObject *sid, uint32_t value) {
    if (!PyLong_CheckExact(sid)) return;
    SidKey *kept = sid_slot(self, value);
    Py_XSETREF(kept->key, Py_NewRef(sid));
    kept->sid = value;
}

/* a new reference to the int `sid` is looked up by */
static PyObject *sid_key(Lane *self, uint32_t sid) {
    SidKey *kept = sid_slot(self, sid);
    if (kept->key == NULL || kept->sid != sid) {
        PyObject *key = PyLong_FromUnsignedLong(sid);
        if (key == NULL) return NULL;
        Py_XSETREF(kept->key, key);
        kept->sid = sid;
    }
    return Py_NewRef(kept->key);
}

/* the session's sid as the lane keys it; 0 (an exception set) on an error, or if it is out of range */
static uint32_t sid_of(PyObject *sid) {
    unsigned long value = PyLong_AsUnsignedLong(sid);
    if (value == (unsigned long)-1 && PyErr_Occurred()) return 0;
    return value > UINT32_MAX ? 0 : (uint32_t)value;
}

/* Both tables hold the entry: by sid (a datagram's header names it) and by session (a recipient's);
 * the sid's int is kept as its key (`keep_sid`).
 * Entries of sessions the room has let go are swept when they outnumber its sessions: both
 * tables are made again from the entries of sessions the room still holds. */
static int keep_entry(Lane *self, PyObject *sid, Entry *e) {
    PyObject *sessions = get_attr(self->room, &s_sessions);
    if (sessions == NULL) return -1;
    if (PyDict_Check(sessions) && PyDict_GET_SIZE(self->by_sid) > 2 * PyDict_GET_SIZE(sessions) + 8) {
        PyObject *by_sid = PyDict_New(), *by_session = PyDict_New();
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        int failed = by_sid == NULL || by_session == NULL;
        while (!failed && PyDict_Next(self->by_sid, &pos, &key, &value)) {
            PyObject *live = PyDict_GetItemWithError(sessions, key);
            if (live == NULL && PyErr_Occurred()) failed = 1;
            else if (live == ((Entry *)value)->session)
                failed = PyDict_SetItem(by_sid, key, value) < 0 || PyDict_SetItem(by_session, live, value) < 0;
        }
        if (failed) {
            Py_XDECREF(by_sid);
            Py_XDECREF(by_session);
            Py_DECREF(sessions);
            return -1;
        }
        Py_SETREF(self->by_sid, by_sid);
        Py_SETREF(self->by_session, by_session);
    }
    Py_DECREF(sessions);
    if (PyDict_SetItem(self->by_sid, sid, (PyObject *)e) < 0 || PyDict_SetItem(self->by_session, e->session, (PyObject *)e) < 0)
        return -1;
    keep_sid(self, sid, e->sid);
    return 0;
}

static PyObject *Lane_offer(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "offer(session, member, path, name)");
        return NULL;
    }
    PyObject *session = args[0], *member = args[1], *path = args[2], *name = args[3];
    if (self->by_sid == NULL) Py_RETURN_FALSE;
    if (!PyBytes_Check(name) || PyBytes_GET_SIZE(name) > (Py_ssize_t)sizeof(struct sockaddr_storage) ||
        PyBytes_GET_SIZE(name) < (Py_ssize_t)sizeof(sa_family_t))
        Py_RETURN_FALSE;
    PyObject *sid = get_attr(session, &s_sid), *addr = NULL, *result = NULL;
    Entry *e = NULL;
    uint32_t sid_value;
    if (sid == NULL || (addr = get_attr(path, &s_addr)) == NULL) goto done;
    if ((sid_value = sid_of(sid)) == 0) {
        if (!PyErr_Occurred()) result = Py_NewRef(Py_False);
        goto done;
    }
    if ((e = make_entry(session, member, sid_value, 1)) == NULL) {
        if (!PyErr_Occurred()) result = Py_NewRef(Py_False); /* not the C pieces: the room's */
        goto done;
    }
    Entry *kept = (Entry *)PyDict_GetItemWithError(self->by_sid, sid);
    if (kept == NULL && PyErr_Occurred()) goto done;
    if (kept != NULL && kept->session == session && kept->member == member && kept->path == path &&
        kept->addr == addr) { /* offered again, nothing changed (the room offers at each of its packets) */
        result = Py_NewRef(Py_True);
        goto done;
    }
    Py_SETREF(e->path, Py_NewRef(path));
    Py_SETREF(e->addr, addr);
    addr = NULL;
    e->namelen = (socklen_t)PyBytes_GET_SIZE(name);
    memcpy(&e->name, PyBytes_AS_STRING(name), e->namelen);
    if (keep_entry(self, sid, e) == 0) result = Py_NewRef(Py_True);
done:
    Py_XDECREF(e);
    Py_XDECREF(sid);
    Py_XDECREF(addr);
    return result;
}

/* ---- a packet's plan ------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *data;
    Py_ssize_t size;
    Py_ssize_t first, count; /* its recipients: plan.to[first : first + count] */
    unsigned char pong[PONG_MAX]; /* a PING's: the PONG for its sender (pong_len bytes), no data */
    int pong_len;
} Planned;

typedef struct {
    Planned msgs[MAX_MESSAGES];
    int nmsgs;
    Entry *to[MAX_RECIPIENTS];
    Py_ssize_t nto;
    /* the broadcast's recipients of `all_for`'s packets: resolved at its first broadcast of a
     * read and kept for its next packets of that read, until anything is handed to the room
     * (which may change who they are): `plan_forget` */
    Entry *all[MAX_RECIPIENTS];
    Py_ssize_t nall;
    int all_done;
    Entry *all_for;
    Entry *live; /* a WebSocket sender found live (`connection_live`) at this read, kept as `all` is */
} Plan;

/* the recipient `other` (a Member of the room, not the sender): its live entry, NULL (with no
 * exception) if it has no session (nobody to send to: skipped, as the room skips it) via *skip,
 * or if its session is not the lane's (then the packet is the room's) */
static int recipient(Lane *self, PyObject *other, Entry **out) {
    *out = NULL;
    PyObject *session = get_attr(other, &s_session);
    if (session == NULL) return -1;
    if (session == Py_None) {
        Py_DECREF(session);
        return 1; /* skipped */
    }
    Entry *e = (Entry *)PyDict_GetItemWithError(self->by_session, session);
    Py_DECREF(session); /* the entry holds it */
    if (e == NULL) return PyErr_Occurred() ? -1 : 0;
    if (e->member != other) return 0;
    if (e->kind != KIND_UDP) { /* its connection's, while the lane reads it */
        if (e->fd < 0) return 0;
        *out = e;
        return 1;
    }
    int ok = attr_is(e->session, &s_path, e->path);
    if (ok != 1) return ok;
    if ((ok = attr_true(e->path, &s_validated)) != 1) return ok;
    if ((ok = attr_is(e->path, &s_addr, e->addr)) != 1) return ok;
    *out = e;
    return 1;
}

/* `other` (a member) into the list `to` of *n entries, unless it is the sender or has nobody to
 * send to: 1, or 0 if the packet is the room's (not the lane's session, or the list full) */
static int add_recipient(Lane *self, PyObject *other, Entry *sender, Entry **to, Py_ssize_t *n) {
    if (other == sender->member) return 1;
    Entry *e;
    int ok = recipient(self, other, &e);
    if (ok != 1 || e == NULL) return ok;
    if (*n == MAX_RECIPIENTS) return 0;
    to[(*n)++] = e;
    return 1;
}

/* 1: planned; 0: the room's; -1: error */
static int plan_broadcast(Lane *self, Plan *plan, PyObject *members, Entry *sender) {
    if (plan->all_done && plan->all_for == sender) return 1;
    plan->all_done = 0, plan->all_for = sender;
    PyObject *key, *other;
    Py_ssize_t pos = 0;
    plan->nall = 0;
    while (PyDict_Next(members, &pos, &key, &other)) {
        int ok = add_recipient(self, other, sender, plan->all, &plan->nall);
        if (ok != 1) return ok;
    }
    plan->all_done = 1;
    return 1;
}

/* msgpack: a positive integer at *p (fixint, uint 8/16/32/64); 0 if not one */
static int read_uint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    const unsigned char *q = *p;
    if (q >= end) return 0;
    unsigned char c = *q++;
    int n;
    if (c < 0x80) {
        *v = c, *p = q;
        return 1;
    }
    if (c == 0xCC) n = 1;
    else if (c == 0xCD) n = 2;
    else if (c == 0xCE) n = 4;
    else if (c == 0xCF) n = 8;
    else return 0;
    if (end - q < n) return 0;
    *v = be(q, n), *p = q + n;
    return 1;
}

/* One SEND (its data, and its targets: none for everyone else) into the plan, with its
 * recipients. 1: planned; 0: the room's. */
static int plan_message(Lane *self, Plan *plan, const unsigned char *data, Py_ssize_t n, const uint64_t *cids,
                        Py_ssize_t ntargets, Entry *sender, PyObject *members) {
    if (plan->nmsgs == MAX_MESSAGES || n > (sender->kind == KIND_UDP ? self->max_payload : self->ws_max_payload))
        return 0;
    Planned *msg = &plan->msgs[plan->nmsgs++];
    msg->data = data, msg->size = n, msg->first = plan->nto, msg->count = 0, msg->pong_len = 0;
    if (ntargets == 0) { /* nil or []: everyone else */
        int ok = plan_broadcast(self, plan, members, sender);
        if (ok != 1) return ok;
        if (plan->nto + plan->nall > MAX_RECIPIENTS) return 0;
        memcpy(plan->to + plan->nto, plan->all, plan->nall * sizeof(Entry *));
        plan->nto += plan->nall, msg->count = plan->nall;
        return 1;
    }
    for (Py_ssize_t t = 0; t < ntargets; t++) {
        int seen = 0; /* each target once, in the order first named */
        for (Py_ssize_t u = 0; u < t && !seen; u++) seen = cids[u] == cids[t];
        if (seen) continue;
        PyObject *cid = PyLong_FromUnsignedLongLong(cids[t]);
        if (cid == NULL) return -1;
        PyObject *other = PyDict_GetItemWithError(members, cid);
        Py_DECREF(cid);
        if (other == NULL) {
            if (PyErr_Occurred()) return -1;
            continue; /* not in the room: nobody to send to */
        }
        int ok = add_recipient(self, other, sender, plan->to, &plan->nto);
        if (ok != 1) return ok;
    }
    msg->count = plan->nto - msg->first;
    return 1;
}

/* msgpack: v as the shortest positive integer (as msgpack-python packs it), at q: its end */
static unsigned char *put_uint(unsigned char *q, uint64_t v) {
    int n;
    if (v < 0x80) {
        *q++ = (unsigned char)v;
        return q;
    }
    if (v <= 0xFF) *q++ = 0xCC, n = 1;
    else if (v <= 0xFFFF) *q++ = 0xCD, n = 2;
    else if (v <= 0xFFFFFFFF) *q++ = 0xCE, n = 4;
    else *q++ = 0xCF, n = 8;
    for (int i = n - 1; i >= 0; i--) *q++ = (unsigned char)(v >> (8 * i));
    return q;
}

/* A PING: its PONG, for the sender alone, planned as the room answers it (room.py's
 * _member_messages: a message against the member's rate, of no bytes). Keepalives a client sends
 * every few seconds would otherwise take their whole read to the room: its PONG is output of the
 * room's for the pass, so the read's later packets are its too (docs/architecture.md). 1:
 * planned; 0: the room's. */
static int plan_pong(Plan *plan, uint64_t ping_id, uint64_t client_time) {
    if (plan->nmsgs == MAX_MESSAGES) return 0;
    Planned *msg = &plan->msgs[plan->nmsgs++];
    unsigned char *q = msg->pong;
    *q++ = 0x93, *q++ = PONG_CODE;
    q = put_uint(put_uint(q, ping_id), client_time);
    msg->data = NULL, msg->size = 0, msg->first = plan->nto, msg->count = 0, msg->pong_len = (int)(q - msg->pong);
    return 1;
}

static void plan_begin(Plan *plan) { plan->nmsgs = 0, plan->nto = 0; }

static void plan_forget(Plan *plan) {
    if (plan != NULL) plan->all_done = 0, plan->all_for = plan->live = NULL;
}

/* Parses the plaintext's SENDs and PINGs and finds each SEND's recipients. 1: planned; 0: the
 * room's. */
static int plan_packet(Lane *self, Plan *plan, const unsigned char *p, const unsigned char *end, Entry *sender,
                       PyObject *members) {
    plan_begin(plan);
    if (p >= end) return 0;
    while (p < end) {
        /* [2, bin, nil | [uint, ...]] or [4, uint, uint]: exactly these shapes, anything else is
         * the room's */
        if (end - p < 3 || p[0] != 0x93) return 0;
        if (p[1] == PING_CODE) {
            uint64_t ping_id, client_time;
            p += 2;
            if (!read_uint(&p, end, &ping_id) || !read_uint(&p, end, &client_time)) return 0;
            if (!plan_pong(plan, ping_id, client_time)) return 0;
            continue;
        }
        if (p[1] != SEND_CODE) return 0;
        p += 2;
        Py_ssize_t n;
        if (*p == 0xC4 && end - p >= 2) n = p[1], p += 2;
        else if (*p == 0xC5 && end - p >= 3) n = (Py_ssize_t)be(p + 1, 2), p += 3;
        else if (*p == 0xC6 && end - p >= 5) n = (Py_ssize_t)be(p + 1, 4), p += 5;
        else return 0;
        if (end - p < n) return 0;
        const unsigned char *data = p;
        p += n;
        if (p >= end) return 0;
        Py_ssize_t ntargets;
        if (*p == 0xC0) ntargets = 0, p++;
        else if ((*p & 0xF0) == 0x90) ntargets = *p & 0x0F, p++;
        else if (*p == 0xDC && end - p >= 3) ntargets = (Py_ssize_t)be(p + 1, 2), p += 3;
        else return 0;
        if (ntargets > MAX_TARGETS) return 0;
        uint64_t cids[MAX_TARGETS];
        for (Py_ssize_t t = 0; t < ntargets; t++)
            if (!read_uint(&p, end, &cids[t])) return 0;
        int ok = plan_message(self, plan, data, n, cids, ntargets, sender, members);
        if (ok != 1) return ok;
    }
    return 1;
}

/* The buckets as the room's per-message takes would leave them, all taken: 1, else 0 (the
 * room's, nothing spent). */
static int spend(Plan *plan, Entry *sender, double now) {
    TokenBucketObject msgs = *sender->msgs, bytes = *sender->bytes; /* copies: the fields only */
    for (int i = 0; i < plan->nmsgs; i++)
        if (!bucket_take(&msgs, 1.0, now) || !bucket_take(&bytes, (double)plan->msgs[i].size, now)) return 0;
    sender->msgs->tokens = msgs.tokens, sender->msgs->stamp = msgs.stamp;
    sender->bytes->tokens = bytes.tokens, sender->bytes->stamp = bytes.stamp;
    return 1;
}

static int mark_dirty(Lane *self, Entry *e) {
    if (e->dirty) return 0;
    if (self->ndirty == self->dirty_cap) {
        Py_ssize_t cap = self->dirty_cap ? 2 * self->dirty_cap : 16;
        Entry **grown = PyMem_Realloc(self->dirty, cap * sizeof(Entry *));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->dirty = grown, self->dirty_cap = cap;
    }
    Py_INCREF(e);
    e->dirty = 1;
    self->dirty[self->ndirty++] = e;
    return 0;
}

/* ---- one datagram ---------------------------------------------------------------------------- */

enum { TAKEN = 1, ROOMS = 0, HANDED = 2 };

static int flush(Lane *self, double start);
static void queue_plan(Lane *self, Entry *e, Plan *plan, Py_ssize_t n, double now);
static int gs2_queue_mac(Lane *self, Entry *sender, Entry *to, const unsigned char *data, Py_ssize_t n,
                         unsigned char mac[32], int *made);

/* A packet the room would have counted as read: packets_in and bytes_in of its transport, with
 * the read's others (count_pending, before anything reads them) */
static void count_packet(Lane *self, int kind, Py_ssize_t n, long long messages) {
    long long *pending = self->pending[kind];
    pending[0] += 1, pending[1] += n, pending[2] += messages, self->pending_any = 1;
}

/* A replay or a forgery of a session's packet: dropped and counted here as the room counts it
 * (opening it again in the room would double a flood's AES-GCM). */
static int refused(Lane *self, int kind, Py_ssize_t n, int opened) {
    count_packet(self, kind, n, 0);
    if (count_drop(self->counters, opened == REPLAYED ? "replay" : "decrypt", 1) < 0) return -1;
    return opened == FORGED ? add_to(self->counters, &s_decrypt_failures, PyLong_FromLong(1)) : 0;
}

/* The member's limits, as the room checks them before it opens a packet: 1 if the lane may take
 * it, 0 if the room's (muted, or over a limit and recovering), -1 on an error. */
static int within_limits(Entry *e, double now) {
    double muted, over;
    if (attr_double(e->session, &s_muted_until, &muted) < 0 || attr_double(e->member, &s_over_since, &over) < 0)
        return -1;
    return now < muted || over != 0.0 ? 0 : 1;
}

/* A session's DATA packet (a datagram, or a WebSocket frame's payload), checked as its own:
 * opened, and relayed here if its plaintext is the lane's, else handed to the room with it
 * (`name`: the datagram's address; NULL for a WebSocket's). TAKEN: relayed (or, a replay or
 * forgery, dropped) here. ROOMS: the room's, untouched. HANDED: opened, its plaintext handed to
 * the room (done). -1: an error, the packet untouched. */
static int relay_packet(Lane *self, Entry *e, const unsigned char *data, Py_ssize_t n, uint64_t counter,
                        const struct sockaddr_storage *name, double now, PyObject *members, Plan *plan,
                        unsigned char *plain) {
    int kind = e->kind;
    int opened = aead->open(e->opener, data, n, counter, plain);
    if (opened < 0) return -1;
    if (opened != OPENED) return refused(self, kind, n, opened) < 0 ? -1 : TAKEN;
    Py_ssize_t plain_size = n - HEADER_SIZE - TAG_SIZE;
    Py_INCREF(e); /* a hand-over may let the room drop it */
    int planned = plan_packet(self, plan, plain, plain + plain_size, e, members);
    if (planned == 1) planned = spend(plan, e, now);
    if (planned < 0) {
        internal_error(self, "plan");
        planned = 0;
    }
    if (planned == 0) { /* opened: the window has moved, so the room gets the plaintext */
        /* counted as the room counts a packet; what the lane queued leaves before the room
         * does anything with it */
        count_packet(self, kind, n, 0);
        if (flush(self, now) < 0) internal_error(self, "flush"); /* and the counts */
        PyObject *packet = PyBytes_FromStringAndSize((const char *)data, n),
                 *text = PyBytes_FromStringAndSize((const char *)plain, plain_size),
                 *addr = name != NULL ? address_of(name) : Py_NewRef(Py_None);
        PyObject *result = NULL;
        if (packet && text && addr) {
            PyObject *args[] = {e->session, packet, text, NULL, addr, NULL};
            args[3] = PyLong_FromUnsignedLongLong(counter);
            args[5] = PyFloat_FromDouble(now);
            if (args[3] && args[5]) result = PyObject_Vectorcall(self->punt_opened, args, 6, NULL);
            Py_XDECREF(args[3]);
            Py_XDECREF(args[5]);
        }
        Py_XDECREF(packet);
        Py_XDECREF(text);
        Py_XDECREF(addr);
        if (result == NULL) internal_error(self, "punt_opened");
        Py_XDECREF(result);
        Py_DECREF(e);
        return HANDED;
    }
    queue_plan(self, e, plan, n, now);
    Py_DECREF(e);
    return TAKEN;
}

/* A packet of `e`'s (n bytes as read) taken: its planned messages queued for their recipients,
 * and counted as the room counts a member's messages. */
static void queue_plan(Lane *self, Entry *e, Plan *plan, Py_ssize_t n, double now) {
    int kind = e->kind, lost = 0; /* out of memory: what was queued still leaves, the rest is lost, counted */
    for (int m = 0; m < plan->nmsgs && !lost; m++) {
        Planned *msg = &plan->msgs[m];
        unsigned char mac[32];
        int made = 0; /* mac holds the message's HMAC for GS2 recipients */
        if (msg->pong_len) { /* the sender's, in order with what others send it in this read */
            unsigned char *at = mark_dirty(self, e) < 0 ? NULL : entry_extend(e, msg->pong_len);
            if (at == NULL) {
                if (!PyErr_Occurred()) PyErr_NoMemory();
                internal_error(self, "queue");
                lost = 1;
            } else {
                memcpy(at, msg->pong, msg->pong_len);
            }
        }
        for (Py_ssize_t r = msg->first; r < msg->first + msg->count && !lost; r++) {
            Entry *to = plan->to[r];
            if (mark_dirty(self, to) < 0 || entry_append(to, e->prefix, e->prefix_len, msg->data, msg->size) < 0 ||
                (to->kind == KIND_GS2 && gs2_queue_mac(self, e, to, msg->data, msg->size, mac, &made) < 0)) {
                if (!PyErr_Occurred()) PyErr_NoMemory();
                internal_error(self, "queue");
                lost = 1;
            }
        }
    }
    count_packet(self, kind, n, plan->nmsgs);
    if (e->seen_at == now && self->active_at == now) return; /* stamped at this read already */
    PyObject *stamp = PyFloat_FromDouble(now);
    if (stamp == NULL || (e->seen_at != now && set_attr(e->session, &s_last_seen, stamp) < 0) ||
        (self->active_at != now && set_attr(self->room, &s_last_activity, stamp) < 0))
        internal_error(self, "counters");
    else
        e->seen_at = self->active_at = now;
    Py_XDECREF(stamp);
}

/* A datagram: a DATA packet of a member's session on its validated path, from that path's
 * address, is `relay_packet`'s; anything else the room's (ROOMS). */
static int datagram(Lane *self, int i, double now, PyObject *members, PyObject *sessions, Plan *plan,
                    unsigned char *plain) {
    const unsigned char *data = self->bufs + (Py_ssize_t)i * BUFSIZE;
    Py_ssize_t n = self->in[i].msg_len;
    if ((self->in[i].msg_hdr.msg_flags & MSG_TRUNC) || n < HEADER_SIZE + TAG_SIZE || n > MAX_PACKET ||
        data[0] != VERSION || data[1] != TYPE_DATA || data[2] || data[3])
        return ROOMS;
    uint32_t sid = (uint32_t)be(data + 4, 4);
    uint64_t counter = be(data + 8, 8);
    if (!sid || !counter) return ROOMS;
    PyObject *key = sid_key(self, sid);
    if (key == NULL) return -1;
    Entry *e = (Entry *)PyDict_GetItemWithError(self->by_sid, key);
    PyObject *live = e ? PyDict_GetItemWithError(sessions, key) : NULL;
    Py_DECREF(key);
    if (e == NULL || live != e->session || e->kind != KIND_UDP) return PyErr_Occurred() ? -1 : ROOMS;
    if (!same_name(&self->names[i], &e->name)) return ROOMS; /* from elsewhere: the room rebinds */
    int ok;
    if ((ok = attr_is(e->session, &s_member, e->member)) != 1 || (ok = attr_is(e->member, &s_session, e->session)) != 1 ||
        (ok = attr_is(e->session, &s_path, e->path)) != 1 || (ok = attr_true(e->path, &s_validated)) != 1 ||
        (ok = attr_is(e->path, &s_addr, e->addr)) != 1 || (ok = within_limits(e, now)) != 1)
        return ok;
    return relay_packet(self, e, data, n, counter, &self->names[i], now, members, plan, plain);
}

/* ---- GS2 clients: protobuf Containers (relay/protocol/gs2/wire.py) ----------------------------- */

/* a protobuf varint at *p; 0 if cut short or longer than ten bytes */
static int pb_varint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    uint64_t value = 0;
    for (int shift = 0; shift < 70 && *p < end; shift += 7) {
        unsigned char c = *(*p)++;
        value |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) {
            *v = value;
            return 1;
        }
    }
    return 0;
}

/* One field at *p: its number, and a varint's value (wire type 0) or a length-delimited field's
 * bytes (2). 0: cut short, or another wire type (the connection's parser decides). */
typedef struct {
    uint64_t number, value;
    int wire;
    const unsigned char *bytes;
    Py_ssize_t len;
} PbField;

static int pb_field(const unsigned char **p, const unsigned char *end, PbField *f) {
    uint64_t tag;
    if (!pb_varint(p, end, &tag) || (tag >> 3) == 0) return 0;
    f->number = tag >> 3, f->wire = (int)(tag & 7);
    if (f->wire == 0) return pb_varint(p, end, &f->value);
    if (f->wire != 2 || !pb_varint(p, end, &f->value) || f->value > (uint64_t)(end - *p)) return 0;
    f->bytes = *p, f->len = (Py_ssize_t)f->value;
    *p += f->len;
    return 1;
}

static int vsize(uint64_t v) {
    int n = 1;
    while (v >= 0x80) v >>= 7, n++;
    return n;
}

static unsigned char *put_varint(unsigned char *p, uint64_t v) {
    while (v >= 0x80) *p++ = (unsigned char)(v | 0x80), v >>= 7;
    *p++ = (unsigned char)v;
    return p;
}

/* HMAC-SHA256 with the room key (wire.Signer), from its inner and outer states, made once */
static void gs2_sign(Lane *self, const unsigned char *value, Py_ssize_t n, unsigned char mac[32]) {
    unsigned char inner[32];
    SHA256_CTX c = self->gs2_inner;
    SHA256_Update(&c, value, (size_t)n);
    SHA256_Final(inner, &c);
    c = self->gs2_outer;
    SHA256_Update(&c, inner, sizeof inner);
    SHA256_Final(mac, &c);
}

/* The bytes of the RelayBinaryMessage{connectionId, data} for `dlen` bytes of data from connection
 * `sender` (0: none), empty fields left out as protobuf leaves them */
static Py_ssize_t gs2_inner_size(uint64_t sender, Py_ssize_t dlen) {
    return (sender ? 1 + vsize(sender) : 0) + (dlen ? 1 + vsize(dlen) + dlen : 0);
}

/* The bytes of the value a GS2 recipient's Container carries for them:
 * BinaryMessage{RelayBinaryMessage{...}} */
static Py_ssize_t gs2_value_size(uint64_t sender, Py_ssize_t dlen) {
    Py_ssize_t inner = gs2_inner_size(sender, dlen);
    return inner ? 1 + vsize(inner) + inner : 0;
}

/* ...written at q: its end */
static unsigned char *gs2_put_value(unsigned char *q, uint64_t sender, const unsigned char *data, Py_ssize_t dlen) {
    Py_ssize_t inner = gs2_inner_size(sender, dlen);
    if (!inner) return q;
    *q++ = 0x0A, q = put_varint(q, inner);
    if (sender) *q++ = 0x08, q = put_varint(q, sender);
    if (dlen) *q++ = 0x12, q = put_varint(q, dlen), memcpy(q, data, dlen), q += dlen;
    return q;
}

/* A message just queued for a GS2 recipient (entry_append): its HMAC beside it (`to->macs`), made
 * at the first GS2 recipient of the message (*made) and copied for the others: one HMAC a message,
 * however many GS2 clients it goes to and however many messages a pass holds. -1: no memory (the
 * message taken off `to` again: each of its messages has its HMAC). */
static int gs2_queue_mac(Lane *self, Entry *sender, Entry *to, const unsigned char *data, Py_ssize_t n,
                         unsigned char mac[32], int *made) {
    if (!*made) {
        uint64_t cid = 0; /* the sender's MESSAGE prefix: [20, connection id, ... */
        const unsigned char *p = sender->prefix + 2;
        if (sender->prefix_len < 3 || !read_uint(&p, sender->prefix + sender->prefix_len, &cid)) cid = 0;
        Py_ssize_t size = gs2_value_size(cid, n);
        if (size > self->gs2_value_cap) {
            unsigned char *grown = PyMem_Realloc(self->gs2_value, size);
            if (grown == NULL) goto unqueue;
            self->gs2_value = grown, self->gs2_value_cap = size;
        }
        gs2_sign(self, self->gs2_value, gs2_put_value(self->gs2_value, cid, data, n) - self->gs2_value, mac);
        *made = 1;
    }
    if (to->nlens * 32 > to->macs_cap) {
        Py_ssize_t cap = to->macs_cap ? 2 * to->macs_cap : 16 * 32;
        while (cap < to->nlens * 32) cap *= 2;
        unsigned char *grown = PyMem_Realloc(to->macs, cap);
        if (grown == NULL) goto unqueue;
        to->macs = grown, to->macs_cap = cap;
    }
    memcpy(to->macs + (to->nlens - 1) * 32, mac, 32);
    return 0;
unqueue:
    to->out_len -= to->lens[--to->nlens];
    return -1;
}

/* ---- the pass's output ----------------------------------------------------------------------- */

/* Counters.observe_fanout(seconds) without a Python call: fanout_buckets[bisect_left(bounds,
 * seconds)] += 1, fanout_ns[0] += its nanoseconds (no bounds given: the Python method) */
static int observe_fanout(Lane *self, double seconds) {
    PyObject *counters = self->counters;
    if (self->nbounds == 0) {
        PyObject *elapsed = PyFloat_FromDouble(seconds);
        PyObject *result = elapsed ? PyObject_CallMethodOneArg(counters, s_observe_fanout.name, elapsed) : NULL;
        Py_XDECREF(elapsed);
        Py_XDECREF(result);
        return result == NULL ? -1 : 0;
    }
    int i = 0;
    while (i < self->nbounds && self->bounds[i] < seconds) i++;
    count_at(self, C_FANOUT_BUCKETS, i, 1);
    count_at(self, C_FANOUT_NS, 0, seconds > 0 ? (long long)(seconds * 1e9 + 0.5) : 0);
    return 0;
}

/* ---- a WebSocket member's output -------------------------------------------------------------- */

/* A frame's header for a payload of n bytes (a server's: unmasked); its length */
static int frame_header(unsigned char *f, Py_ssize_t n) {
    f[0] = 0x82; /* FIN, binary */
    if (n < 126) {
        f[1] = (unsigned char)n;
        return 2;
    }
    if (n < 65536) {
        f[1] = 126, f[2] = (unsigned char)(n >> 8), f[3] = (unsigned char)n;
        return 4;
    }
    f[1] = 127;
    for (int i = 0; i < 8; i++) f[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    return 10;
}

/* A GS2 recipient's messages of the pass as Containers (wire.Recipient.containers), each in a
 * frame of its own, into self->packets: BINARY_MESSAGE{Any{"type.googleapis.com/BinaryMessage",
 * BinaryMessage{RelayBinaryMessage{sender, data}}}, its HMAC}, then the recipient's next sequence
 * number and the milliseconds since the room started. Its length. */
static Py_ssize_t gs2_frames(Lane *self, Entry *e, double now, long long *packets) {
    static const char url[] = "type.googleapis.com/BinaryMessage";
    const Py_ssize_t url_len = sizeof url - 1;
    uint64_t seq = *e->seq;
    uint64_t ms = (uint64_t)(int64_t)((now - self->gs2_started) * 1000.0) & 0xFFFFFFFFu;
    Py_ssize_t at = 0, offset = 0;
    for (Py_ssize_t j = 0; j < e->nlens; j++) {
        const unsigned char *p = e->out + offset, *end = p + e->lens[j];
        offset += e->lens[j];
        uint64_t sender; /* a MESSAGE [20, sender, bin], as entry_append wrote it */
        Py_ssize_t dlen;
        p += 2;
        if (!read_uint(&p, end, &sender)) continue;
        p += *p == 0xC4 ? 2 : *p == 0xC5 ? 3 : 5;
        dlen = end - p;
        Py_ssize_t value = gs2_value_size(sender, dlen);
        Py_ssize_t any = 2 + url_len + (value ? 1 + vsize(value) + value : 0);
        seq = seq < 0xFFFFFFFFu ? seq + 1 : 1;
        Py_ssize_t size = 1 + vsize(GS2_BINARY_MESSAGE) + 1 + vsize(any) + any + 2 + 32 + 1 + vsize(seq) +
                          (ms ? 1 + vsize(ms) : 0);
        unsigned char *f = self->packets + at;
        unsigned char *q = f + frame_header(f, size);
        *q++ = 0x08, q = put_varint(q, GS2_BINARY_MESSAGE);
        *q++ = 0x12, q = put_varint(q, any);
        *q++ = 0x0A, *q++ = (unsigned char)url_len, memcpy(q, url, url_len), q += url_len;
        if (value) *q++ = 0x12, q = put_varint(q, value), q = gs2_put_value(q, sender, p, dlen);
        *q++ = 0x1A, *q++ = 32, memcpy(q, e->macs + j * 32, 32), q += 32; /* gs2_queue_mac's */
        *q++ = 0x20, q = put_varint(q, seq);
        if (ms) *q++ = 0x28, q = put_varint(q, ms);
        at = q - self->packets;
        (*packets)++;
    }
    *e->seq = (uint32_t)seq;
    return at;
}

/* A WebSocket entry's messages of the pass: packed (room.py's _pack), sealed, each behind its
 * frame header (a GS2 client's: each a Container in a frame, gs2_frames), and written straight
 * to its socket when its transport holds nothing queued (else, and for what the socket does not
 * take, through the transport, behind what it queued). Counted as the room counts them; a
 * reader over the send-buffer limit is the room's to let go. */
static int ws_send_entry(Lane *self, Entry *e, double now) {
    Py_ssize_t limit = self->ws_max_plaintext, offset = 0, j = 0, at = 0;
    Py_ssize_t need = e->out_len + e->nlens * (e->kind == KIND_GS2 ? GS2_OVERHEAD : HEADER_SIZE + TAG_SIZE + 4);
    if (need > self->packets_cap) {
        unsigned char *grown = PyMem_Realloc(self->packets, need);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->packets = grown, self->packets_cap = need;
    }
    long long packets = 0, bytes = 0, too_large = 0, failed = 0, messages = e->nlens;
    if (e->kind == KIND_GS2) { /* bytes: the frames', as the room's GS2 link counts them */
        at = gs2_frames(self, e, now, &packets);
        bytes = at, j = e->nlens;
    }
    while (j < e->nlens) {
        Py_ssize_t size = e->lens[j++];
        while (j < e->nlens && size + e->lens[j] <= limit) size += e->lens[j++];
        if (size > limit) {
            too_large++;
        } else {
            Py_ssize_t plen = HEADER_SIZE + size + TAG_SIZE;
            unsigned char *f = self->packets + at;
            int hlen = frame_header(f, plen);
            if (aead->seal(e->sealer, e->out + offset, size, f + hlen) < 0) {
                PyErr_Clear();
                failed++;
            } else {
                at += hlen + plen, packets++, bytes += plen;
            }
        }
        offset += size;
    }
    int overflow = 0, closing = 0;
    if (at > 0 && e->fd < 0) { /* its connection reads itself again: its transport, if open, writes */
        PyObject *truth = PyObject_CallMethodNoArgs(e->transport, s_is_closing.name);
        if (truth == NULL) return -1;
        closing = PyObject_IsTrue(truth);
        Py_DECREF(truth);
        if (closing < 0) return -1;
    }
    if (at > 0 && !closing) {
        long queued = 0;
        if (e->queued || e->fd < 0) {
            PyObject *size = PyObject_CallMethodNoArgs(e->transport, s_get_write_buffer_size.name);
            if (size == NULL) return -1;
            queued = PyLong_AsLong(size);
            Py_DECREF(size);
            if (queued < 0 && PyErr_Occurred()) return -1;
            e->queued = queued != 0;
        }
        Py_ssize_t sent = 0;
        if (queued == 0 && e->fd >= 0) {
            ssize_t n = send(e->fd, self->packets, at, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) sent = n;
            else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) sent = -1;
        }
        if (sent < 0) { /* its connection is going: the room hears of it from the transport */
            count_drop(self->counters, "send_failed", packets);
            packets = bytes = 0;
        } else if (sent < at) {
            PyObject *rest = PyBytes_FromStringAndSize((const char *)self->packets + sent, at - sent);
            PyObject *result = rest ? PyObject_CallMethodOneArg(e->transport, s_write.name, rest) : NULL;
            Py_XDECREF(rest);
            e->queued = 1;
            if (result == NULL) return -1;
            Py_DECREF(result);
            overflow = queued + (at - sent) > self->ws_send_buffer;
        }
    } else if (at > 0) { /* a GS2 link writes nothing to a closing connection, and counts nothing */
        if (e->kind != KIND_GS2) count_drop(self->counters, "send_failed", packets);
        packets = bytes = 0;
    }
    PyObject *counters = self->counters;
    count_at(self, C_MESSAGES_OUT, e->kind, messages);
    count_at(self, C_PACKETS_OUT, e->kind, packets);
    count_at(self, C_BYTES_OUT, e->kind, bytes);
    if ((too_large && count_drop(counters, "too_large_for_transport", too_large) < 0) ||
        (failed && count_drop(counters, "internal_error", failed) < 0))
        return -1;
    if (overflow) {
        PyObject *result = PyObject_CallMethodOneArg(self->room, s_overflow.name, e->session);
        if (result == NULL) return -1;
        Py_DECREF(result);
    }
    return 0;
}

static int flush(Lane *self, double start) {
    count_pending(self);
    if (self->ndirty == 0) return 0;
    /* WebSocket members' output first, each to its own socket; then the datagrams */
    Py_ssize_t kept = 0;
    int ws_failed = 0;
    for (Py_ssize_t i = 0; i < self->ndirty; i++) {
        Entry *e = self->dirty[i];
        if (e->kind == KIND_UDP) {
            self->dirty[kept++] = e;
            continue;
        }
        if (!ws_failed && ws_send_entry(self, e, start) < 0) ws_failed = 1;
        e->dirty = 0, e->out_len = 0, e->nlens = 0;
        Py_DECREF(e);
    }
    int only_ws = kept == 0 && self->ndirty > 0;
    self->ndirty = kept;
    if (ws_failed) {
        clear_dirty(self);
        return -1;
    }
    if (only_ws) return observe_fanout(self, monotonic_now() - start);
    if (self->ndirty == 0) return 0;
    int backlogged = attr_true(self->room, &s_udp_backlogged);
    if (backlogged != 0) { /* the room drops its UDP output until the socket drains: so does the lane */
        long long messages = 0;
        for (Py_ssize_t i = 0; i < self->ndirty; i++) messages += self->dirty[i]->nlens;
        clear_dirty(self);
        return backlogged < 0 ? -1 : count_drop(self->counters, "udp_send_buffer", messages);
    }
    /* sealed packets first (the arena may move while it grows), then the send */
    Py_ssize_t total = 0, npackets = 0;
    for (Py_ssize_t i = 0; i < self->ndirty; i++) {
        Entry *e = self->dirty[i];
        total += e->out_len + (e->nlens + 1) * (HEADER_SIZE + TAG_SIZE);
        npackets += e->nlens;
    }
    if (total > self->packets_cap) {
        unsigned char *grown = PyMem_Realloc(self->packets, total);
        if (grown == NULL) {
            clear_dirty(self);
            PyErr_NoMemory();
            return -1;
        }
        self->packets = grown, self->packets_cap = total;
    }
    if (npackets > self->out_cap) {
        Py_ssize_t cap = npackets < 64 ? 64 : npackets;
        struct mmsghdr *h = PyMem_Realloc(self->out_headers, cap * sizeof(struct mmsghdr));
        if (h != NULL) self->out_headers = h;
        struct iovec *v = h ? PyMem_Realloc(self->out_vectors, cap * sizeof(struct iovec)) : NULL;
        if (v != NULL) self->out_vectors = v;
        if (h == NULL || v == NULL) {
            clear_dirty(self);
            PyErr_NoMemory();
            return -1;
        }
        self->out_cap = cap;
    }
    struct mmsghdr *headers = self->out_headers;
    struct iovec *vectors = self->out_vectors;
    if (npackets) memset(headers, 0, npackets * sizeof(struct mmsghdr)); /* NULL while none was kept */
    Py_ssize_t at = 0, k = 0;
    long long messages = 0, too_large = 0, failed = 0;
    for (Py_ssize_t i = 0; i < self->ndirty; i++) {
        Entry *e = self->dirty[i];
        messages += e->nlens;
        Py_ssize_t limit = self->max_plaintext, offset = 0, j = 0;
        while (j < e->nlens) { /* greedy, in order: room.py's _pack */
            Py_ssize_t size = e->lens[j++];
            while (j < e->nlens && size + e->lens[j] <= limit) size += e->lens[j++];
            if (size > limit) { /* one message longer than a datagram carries */
                too_large++;
            } else if (aead->seal(e->sealer, e->out + offset, size, self->packets + at) < 0) {
                PyErr_Clear(); /* the counter exhausted: nothing for this session, ever */
                failed++;
            } else {
                vectors[k].iov_base = self->packets + at;
                vectors[k].iov_len = HEADER_SIZE + size + TAG_SIZE;
                headers[k].msg_hdr.msg_iov = &vectors[k];
                headers[k].msg_hdr.msg_iovlen = 1;
                headers[k].msg_hdr.msg_name = &e->name;
                headers[k].msg_hdr.msg_namelen = e->namelen;
                at += HEADER_SIZE + size + TAG_SIZE;
                k++;
            }
            offset += size;
        }
    }
    Py_ssize_t done = 0;
    long long sent_bytes = 0, sent = 0, socket_errors = 0, backlog = 0;
    while (done < k) {
        int chunk = k - done < SEND_CHUNK ? (int)(k - done) : SEND_CHUNK;
        int n = self->fd < 0 ? (errno = EBADF, -1) : sendmmsg(self->fd, headers + done, chunk, MSG_DONTWAIT);
        if (n < 0 && errno == EBADF) { /* closed meanwhile: nothing more to send on */
            break;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) { /* unreliable by contract: dropped */
                backlog = k - done;
                break;
            }
            socket_errors++, done++; /* that datagram could not be sent: the next may */
            continue;
        }
        for (int j = 0; j < n; j++) sent_bytes += vectors[done + j].iov_len;
        sent += n, done += n;
    }
    clear_dirty(self);
    PyObject *counters = self->counters;
    count_at(self, C_MESSAGES_OUT, KIND_UDP, messages);
    count_at(self, C_PACKETS_OUT, KIND_UDP, sent);
    count_at(self, C_BYTES_OUT, KIND_UDP, sent_bytes);
    if ((too_large && count_drop(counters, "too_large_for_transport", too_large) < 0) ||
        (failed && count_drop(counters, "internal_error", failed) < 0) ||
        (socket_errors && count_drop(counters, "socket_error", socket_errors) < 0) ||
        (backlog && count_drop(counters, "udp_send_buffer", backlog) < 0))
        return -1;
    if (backlog && self->on_full != NULL && self->on_full != Py_None) { /* the room stops its UDP output */
        PyObject *result = PyObject_CallNoArgs(self->on_full);
        if (result == NULL) return -1;
        Py_DECREF(result);
    }
    return observe_fanout(self, monotonic_now() - start);
}

/* ---- read ------------------------------------------------------------------------------------ */

/* The room has output of its own for this pass, or rules that only it applies now: 1 */
static int room_busy(Lane *self) {
    Attr *names[] = {&s_flush_scheduled, &s_held, &s_shed_optional, &s_udp_backlogged, &s_closed};
    for (int i = 0; i < 5; i++) {
        int truth = attr_true(self->room, names[i]);
        if (truth != 0) return truth;
    }
    return 0;
}

static int hand_over(Lane *self, void *at, double now) {
    int i = *(int *)at;
    PyObject *data = PyBytes_FromStringAndSize((const char *)self->bufs + (Py_ssize_t)i * BUFSIZE, self->in[i].msg_len);
    PyObject *addr = data ? address_of(&self->names[i]) : NULL, *stamp = addr ? PyFloat_FromDouble(now) : NULL;
    PyObject *result = NULL;
    if (stamp != NULL) {
        PyObject *args[] = {data, addr, stamp};
        result = PyObject_Vectorcall(self->punt, args, 3, NULL);
    }
    Py_XDECREF(data);
    Py_XDECREF(addr);
    Py_XDECREF(stamp);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* What a read works with: its plan and plaintext buffers, the room's members and sessions, and
 * whether the room is busy (its own output of the pass, or rules only it applies now: all the
 * read's packets are then the room's; so too when any of this could not be had). */
typedef struct {
    Plan *plan;
    unsigned char *plain;
    PyObject *members, *sessions;
    int busy;
} Pass;

static void begin_pass(Lane *self, Pass *pass) {
    if (self->pass_plan == NULL) self->pass_plan = PyMem_Malloc(sizeof(Plan));
    if (self->pass_plain == NULL) self->pass_plain = PyMem_Malloc(BUFSIZE);
    pass->plan = self->pass_plan;
    pass->plain = self->pass_plain;
    pass->members = get_attr(self->room, &s_members);
    pass->sessions = pass->members ? get_attr(self->room, &s_sessions) : NULL;
    pass->busy = -1;
    plan_forget(pass->plan);
    if (pass->plan && pass->plain && pass->sessions && PyDict_Check(pass->members) && PyDict_Check(pass->sessions))
        pass->busy = room_busy(self);
    if (pass->busy < 0) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        internal_error(self, "read");
        pass->busy = 1;
    }
}

static void end_pass(Pass *pass) {
    Py_XDECREF(pass->members);
    Py_XDECREF(pass->sessions);
}

/* After a packet of a read: counted as relayed here, or as the room's; one the room is to read
 * whole (ROOMS) is handed to it by `hand` (the lane's queued output leaves first, so that none of
 * its sender's later packets overtakes it); and whether the room now holds output of its own for
 * the pass, which makes the rest of the pass its too. */
static void account(Lane *self, int handled, Pass *pass, double now, int (*hand)(Lane *, void *, double),
                    void *packet) {
    int *busy = &pass->busy;
    if (handled == TAKEN) {
        self->fast++;
        return;
    }
    self->punted++;
    plan_forget(pass->plan); /* the room's turn: who the recipients are may change */
    count_pending(self);
    if (handled == ROOMS && !stopped(self)) {
        if (flush(self, now) < 0) internal_error(self, "flush");
        if (!stopped(self) && hand(self, packet, now) < 0) internal_error(self, "punt");
    }
    if (!*busy && !stopped(self) && (*busy = room_busy(self)) < 0) {
        internal_error(self, "read");
        *busy = 1;
    }
}

/* a WebSocket frame's payload, as read from its connection */
typedef struct {
    Entry *e;
    const unsigned char *payload;
    Py_ssize_t len;
} Frame;

/* the frame's payload to its connection, which hands it to the room as it would have read it */
static int hand_frame(Lane *self, void *at, double now) {
    Frame *frame = at;
    PyObject *data = PyBytes_FromStringAndSize((const char *)frame->payload, frame->len), *stamp = PyFloat_FromDouble(now);
    PyObject *result = NULL;
    if (data && stamp) result = PyObject_CallMethodObjArgs(frame->e->conn, s_lane_binary.name, data, stamp, NULL);
    Py_XDECREF(data);
    Py_XDECREF(stamp);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* An unpaced relay's CPU window over, its pacer relay/server/_pacing.c's: the reading taken here
 * (the clock of time.process_time, which LoopPacer reads), so the hook is called only if that
 * starts the pace. 1: the hook is called. */
static int sampled_unpaced(PacerObject *pacer, double now) {
    if (pacer->pace) return 1;
    pacer_sample(pacer, pacers->k, now, clock_seconds(CLOCK_PROCESS_CPUTIME_ID));
    return pacer->pace != 0;
}

/* a hook's due time, its object's attribute (a C pacer's read from its struct): 1 where the
 * object is a C pacer, 0 where not, -1 on an error */
static int hook_due(PyObject *hook, double *due) {
    PyObject *obj = PyTuple_GET_ITEM(hook, 0);
    if (pacers != NULL && Py_IS_TYPE(obj, pacers->type)) {
        *due = ((PacerObject *)obj)->lane_due;
        return 1;
    }
    return named_double(obj, PyTuple_GET_ITEM(hook, 1), due);
}

/* What is due at the end of a pass: hook(stamp) for each (object, attribute, hook) of `hooks`
 * whose object's attribute is at or before `now` (the relay's rides, its pacer: a C pacer's
 * unpaced windows are sampled here). */
static void run_hooks(Lane *self, PyObject *hooks, double now, double stamp_at) {
    if (hooks == NULL) return;
    Py_INCREF(hooks);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(hooks) && !stopped(self); i++) {
        PyObject *hook = PyTuple_GET_ITEM(hooks, i), *obj = PyTuple_GET_ITEM(hook, 0);
        double due;
        int pacer = hook_due(hook, &due);
        if (pacer < 0) {
            internal_error(self, "hook");
            continue;
        }
        if (now < due || (pacer && !sampled_unpaced((PacerObject *)obj, now))) continue;
        PyObject *stamp = PyFloat_FromDouble(stamp_at);
        PyObject *result = stamp ? PyObject_CallOneArg(PyTuple_GET_ITEM(hook, 2), stamp) : NULL;
        Py_XDECREF(stamp);
        if (result == NULL) internal_error(self, "hook");
        Py_XDECREF(result);
    }
    Py_DECREF(hooks);
}

/* The end of a call that held the lane (`reading`, a reference to itself): a close that came
 * meanwhile lets go of the room now (what it queued goes nowhere), and an interrupt met in it is
 * raised from it, as from the room's handler. */
static PyObject *finish(Lane *self) {
    self->reading = 0;
    if (self->closing) {
        self->closing = 0;
        Lane_clear(self);
    }
    PyObject *result = Py_NewRef(Py_None);
    if (self->stop_type != NULL) {
        PyErr_Restore(self->stop_type, self->stop_value, self->stop_tb);
        self->stop_type = self->stop_value = self->stop_tb = NULL;
        Py_CLEAR(result);
    }
    Py_DECREF(self);
    return result;
}

static PyObject *Lane_read(Lane *self, PyObject *unused) {
    if (self->room == NULL || self->reading || self->fd < 0) Py_RETURN_NONE; /* closed, or nested */
    for (int i = 0; i < BATCH; i++) {
        self->iov[i].iov_base = self->bufs + (Py_ssize_t)i * BUFSIZE;
        self->iov[i].iov_len = BUFSIZE;
        memset(&self->in[i].msg_hdr, 0, sizeof(struct msghdr));
        self->in[i].msg_hdr.msg_iov = &self->iov[i];
        self->in[i].msg_hdr.msg_iovlen = 1;
        self->in[i].msg_hdr.msg_name = &self->names[i];
        self->in[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
    }
    int n = recvmmsg(self->fd, self->in, BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) {
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
            count_drop(self->counters, "socket_error", 1) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    /* what the callbacks below run may close the lane (it then waits for this read's end) */
    Py_INCREF(self);
    self->reading = 1;
    double now = monotonic_now();
    Pass pass;
    begin_pass(self, &pass);
    for (int i = 0; i < n && !stopped(self); i++) {
        int handled = ROOMS;
        /* a datagram the room's own output of this pass would have to go out before: the room's */
        if (!pass.busy) {
            handled = datagram(self, i, now, pass.members, pass.sessions, pass.plan, pass.plain);
            if (handled < 0) {
                internal_error(self, "datagram");
                handled = ROOMS;
            }
        }
        account(self, handled, &pass, now, hand_over, &i);
    }
    if (!stopped(self) && flush(self, now) < 0) internal_error(self, "flush");
    count_pending(self);
    run_hooks(self, self->hooks, now, now); /* the pass's end: what is due then (its rides, its pacer) */
    end_pass(&pass);
    return finish(self);
}

/* ---- WebSocket members ----------------------------------------------------------------------- */

/* ws_limits(max_payload_ws, max_plaintext_ws, ws_send_buffer): WebSocket members may be offered */
static PyObject *Lane_ws_limits(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyTuple_Check(args[3]) || !PyCallable_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "ws_limits(max_payload, max_plaintext, send_buffer, hooks, schedule)");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[3]); i++) {
        PyObject *hook = PyTuple_GET_ITEM(args[3], i);
        if (!PyTuple_Check(hook) || PyTuple_GET_SIZE(hook) != 3 || !PyUnicode_Check(PyTuple_GET_ITEM(hook, 1)) ||
            !PyCallable_Check(PyTuple_GET_ITEM(hook, 2))) {
            PyErr_SetString(PyExc_TypeError, "hooks: (object, attribute, callable) each");
            return NULL;
        }
    }
    Py_ssize_t v[3];
    for (int i = 0; i < 3; i++)
        if ((v[i] = PyLong_AsSsize_t(args[i])) == -1 && PyErr_Occurred()) return NULL;
    if (v[1] <= 0 || v[1] > 65536 - HEADER_SIZE - TAG_SIZE) {
        PyErr_SetString(PyExc_ValueError, "max_plaintext: a WebSocket packet's");
        return NULL;
    }
    self->ws_max_payload = v[0], self->ws_max_plaintext = v[1], self->ws_send_buffer = v[2];
    Py_INCREF(args[3]);
    Py_XSETREF(self->ws_hooks, args[3]);
    Py_INCREF(args[4]);
    Py_XSETREF(self->ws_schedule, args[4]);
    Py_RETURN_NONE;
}

/* gs2_limits(key, started, max_size): GS2 clients may be offered; key: the room key's ASCII
 * (wire.room_hmac_key), started: when the room started (room.started), max_size: the largest
 * message a client may send (gs2.max_message) */
static PyObject *Lane_gs2_limits(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "gs2_limits(key: bytes, started, max_size)");
        return NULL;
    }
    double started = PyFloat_AsDouble(args[1]);
    Py_ssize_t max_size = PyLong_AsSsize_t(args[2]);
    if ((started == -1.0 || max_size == -1) && PyErr_Occurred()) return NULL;
    if (max_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "max_size: positive");
        return NULL;
    }
    unsigned char block[64] = {0}, pad[64];
    const unsigned char *key = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (n > 64) SHA256(key, (size_t)n, block); /* RFC 2104: a longer key is hashed first */
    else memcpy(block, key, n);
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x36;
    SHA256_Init(&self->gs2_inner), SHA256_Update(&self->gs2_inner, pad, 64);
    for (int i = 0; i < 64; i++) pad[i] = block[i] ^ 0x5C;
    SHA256_Init(&self->gs2_outer), SHA256_Update(&self->gs2_outer, pad, 64);
    self->gs2_started = started, self->gs2_max_size = max_size;
    Py_RETURN_NONE;
}

/* a member's socket into the lane's epoll set, whose readiness `ws_flush_now` asks */
static void ws_watch(Lane *self, int fd) {
    if (!self->ws_ep_made) {
        if ((self->ws_epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
            self->ws_unwatched = 1;
            return;
        }
        self->ws_ep_made = 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data = {.fd = fd}};
    if (epoll_ctl(self->ws_epfd, EPOLL_CTL_ADD, fd, &ev) < 0) self->ws_unwatched = 1;
}

/* A WebSocket read's output leaves at the read's end, not at the end of the event loop's pass,
 * where no later read of this pass could share its sends: no other member's socket (nor this
 * one) has more to read now. Scheduling the pass's flush (a call_soon and its idle callback)
 * was 12% of a WebSocket relay's CPU in the deployed shape, where a pass reads one member's
 * frame. A relay that paces (a hook due at every read: the pacer's lane_due at -inf) rests at
 * the end of the pass, after its other reads, so its output waits for the pass as before. */
static int ws_flush_now(Lane *self) {
    if (!self->ws_ep_made || self->ws_unwatched || self->ws_hooks == NULL) return 0;
    PyObject *hooks = self->ws_hooks;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(hooks); i++) {
        double due;
        if (hook_due(PyTuple_GET_ITEM(hooks, i), &due) < 0) {
            PyErr_Clear();
            return 0;
        }
        if (due == -INFINITY) return 0;
    }
    struct epoll_event ev;
    return epoll_wait(self->ws_epfd, &ev, 1, 0) == 0;
}

/* e numbers its Containers in `recipient.seq_cell` (wire.Recipient's), in place; -1 on an error */
static int gs2_numbering(Entry *e, PyObject *recipient) {
    PyObject *cell = get_attr(recipient, &s_seq_cell);
    if (cell == NULL) return -1;
    int got = PyObject_GetBuffer(cell, &e->seq_view, PyBUF_WRITABLE | PyBUF_FORMAT);
    Py_DECREF(cell);
    if (got < 0) return -1;
    const char *format = e->seq_view.format;
    if (e->seq_view.len != sizeof(uint32_t) || e->seq_view.itemsize != sizeof(uint32_t) || format == NULL ||
        strcmp(format, "I") != 0) {
        PyBuffer_Release(&e->seq_view);
        PyErr_SetString(PyExc_TypeError, "recipient.seq_cell: an array('I') of one item");
        return -1;
    }
    e->seq = e->seq_view.buf;
    return 0;
}

/* ws_offer(session, member, fd, conn, transport, recipient=None) -> Entry | None: the WebSocket
 * member's frames may be read here from fd (the lane's own dup of its socket, which the
 * connection closes); recipient: a GS2 client's wire.Recipient (its connection speaks GS2) */
static PyObject *Lane_ws_offer(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "ws_offer(session, member, fd, conn, transport, recipient=None)");
        return NULL;
    }
    PyObject *session = args[0], *member = args[1], *conn = args[3], *transport = args[4];
    PyObject *gs2 = nargs == 6 && args[5] != Py_None ? args[5] : NULL;
    int fd = PyLong_AsLong(args[2]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (self->by_sid == NULL || self->ws_max_plaintext == 0 || fd < 0 || (gs2 && self->gs2_max_size == 0))
        Py_RETURN_NONE;
    PyObject *sid = get_attr(session, &s_sid), *result = NULL;
    Entry *e = NULL;
    uint32_t sid_value;
    if (sid == NULL) return NULL;
    if ((sid_value = sid_of(sid)) == 0 || (e = make_entry(session, member, sid_value, gs2 == NULL)) == NULL) {
        if (!PyErr_Occurred()) result = Py_NewRef(Py_None); /* the room's */
        goto done;
    }
    e->kind = gs2 ? KIND_GS2 : KIND_WS, e->fd = fd;
    e->conn = Py_NewRef(conn), e->transport = Py_NewRef(transport);
    if ((gs2 == NULL || gs2_numbering(e, gs2) == 0) && keep_entry(self, sid, e) == 0) {
        ws_watch(self, fd);
        result = Py_NewRef((PyObject *)e);
    }
done:
    Py_XDECREF(e);
    Py_XDECREF(sid);
    return result;
}

/* ws_forget(entry): its connection took its reading back (or closed): nothing more is read or
 * written on its fd here */
static PyObject *Lane_ws_forget(Lane *self, PyObject *arg) {
    if (Py_TYPE(arg) != &EntryType) {
        PyErr_SetString(PyExc_TypeError, "an Entry");
        return NULL;
    }
    Entry *e = (Entry *)arg;
    if (self->ws_ep_made && e->fd >= 0) epoll_ctl(self->ws_epfd, EPOLL_CTL_DEL, e->fd, NULL);
    e->fd = -1;
    if (self->by_session != NULL) {
        PyObject *kept = PyDict_GetItemWithError(self->by_session, e->session);
        if (kept == arg && PyDict_DelItem(self->by_session, e->session) < 0) return NULL;
        PyObject *sid = sid_key(self, e->sid);
        if (sid == NULL) return NULL;
        kept = PyDict_GetItemWithError(self->by_sid, sid);
        if (kept == arg && PyDict_DelItem(self->by_sid, sid) < 0) {
            Py_DECREF(sid);
            return NULL;
        }
        Py_DECREF(sid);
    }
    Py_RETURN_NONE;
}

/* The connection's session is still the room's and its member's, within its limits: 1, else 0
 * (the room's), -1 on an error. */
static int connection_live(Lane *self, Entry *e, double now, PyObject *sessions) {
    PyObject *key = sid_key(self, e->sid);
    if (key == NULL) return -1;
    PyObject *live = PyDict_GetItemWithError(sessions, key);
    Py_DECREF(key);
    if (live != e->session) return PyErr_Occurred() ? -1 : 0;
    int ok;
    if ((ok = attr_is(e->session, &s_member, e->member)) != 1 || (ok = attr_is(e->member, &s_session, e->session)) != 1)
        return ok;
    return within_limits(e, now);
}

/* A WebSocket member's DATA packet (a binary frame's payload): `relay_packet`'s if it is its
 * session's and its member's, else the room's (ROOMS); no address to check, the connection is
 * the session's. */
static int ws_packet(Lane *self, Entry *e, const unsigned char *data, Py_ssize_t n, double now, PyObject *members,
                     PyObject *sessions, Plan *plan, unsigned char *plain) {
    if (n < HEADER_SIZE + TAG_SIZE || n > BUFSIZE || data[0] != VERSION || data[1] != TYPE_DATA || data[2] || data[3])
        return ROOMS;
    uint64_t counter = be(data + 8, 8);
    if ((uint32_t)be(data + 4, 4) != e->sid || !counter) return ROOMS;
    int ok = plan->live == e ? 1 : connection_live(self, e, now, sessions);
    if (ok != 1) return ok;
    plan->live = e;
    return relay_packet(self, e, data, n, counter, NULL, now, members, plan, plain);
}

/* A GS2 client's message the lane relays: Container{messageType BINARY_MESSAGE, payload
 * Any{type URL, value}, signature} whose signature is the value's HMAC, the value
 * BinaryMessage{data = RelayBinaryMessage{connectionId, data, targetConnectionId (packed or
 * not)}}, each field at most once (the targets aside) and no other: 1, with its data and
 * targets; 0 for anything else (wire.decode answers or relays it as protobuf reads it). */
static int gs2_parse(Lane *self, const unsigned char *p, const unsigned char *end, const unsigned char **data,
                     Py_ssize_t *n, uint64_t *cids, Py_ssize_t *ntargets) {
    PbField f;
    const unsigned char *any = NULL, *signature = NULL, *value = NULL, *relayed = NULL;
    Py_ssize_t any_len = 0, signature_len = 0, value_len = 0, relayed_len = 0;
    int typed = 0, seen = 0; /* bits: fields met */
    while (p < end) {
        if (!pb_field(&p, end, &f)) return 0;
        if (f.number == 1 && f.wire == 0 && !(seen & 1)) typed = f.value == GS2_BINARY_MESSAGE, seen |= 1;
        else if (f.number == 2 && f.wire == 2 && !(seen & 2)) any = f.bytes, any_len = f.len, seen |= 2;
        else if (f.number == 3 && f.wire == 2 && !(seen & 4)) signature = f.bytes, signature_len = f.len, seen |= 4;
        else if ((f.number == 4 || f.number == 5) && f.wire == 0) continue; /* a server's: ignored */
        else return 0;
    }
    if (!typed || any == NULL || signature_len != 32) return 0;
    seen = 0;
    for (p = any, end = any + any_len; p < end;) {
        if (!pb_field(&p, end, &f) || f.wire != 2 || f.number > 2 || (seen & (int)f.number)) return 0;
        seen |= (int)f.number;
        if (f.number == 2) value = f.bytes, value_len = f.len;
        for (Py_ssize_t k = 0; f.number == 1 && k < f.len; k++) /* the type URL: protobuf reads */
            if (f.bytes[k] & 0x80) return 0;                      /* a string's UTF-8 itself */
    }
    unsigned char mac[32];
    gs2_sign(self, value ? value : (const unsigned char *)"", value_len, mac);
    if (CRYPTO_memcmp(mac, signature, 32) != 0) return 0;
    for (p = value, end = value + value_len, seen = 0; value != NULL && p < end;) {
        if (!pb_field(&p, end, &f) || f.number != 1 || f.wire != 2 || seen) return 0;
        relayed = f.bytes, relayed_len = f.len, seen = 1;
    }
    *data = (const unsigned char *)"", *n = 0, *ntargets = 0, seen = 0;
    for (p = relayed, end = relayed + relayed_len; relayed != NULL && p < end;) {
        if (!pb_field(&p, end, &f)) return 0;
        if (f.number == 1 && f.wire == 0 && !(seen & 1) && f.value <= UINT32_MAX) {
            seen |= 1; /* the sender, as the client named it: the relay stamps its own */
        } else if (f.number == 2 && f.wire == 2 && !(seen & 2)) {
            *data = f.bytes, *n = f.len, seen |= 2;
        } else if (f.number == 3 && f.wire == 0) {
            if (*ntargets == MAX_TARGETS || f.value > UINT32_MAX) return 0;
            cids[(*ntargets)++] = f.value;
        } else if (f.number == 3 && f.wire == 2) {
            for (const unsigned char *q = f.bytes, *stop = f.bytes + f.len; q < stop;) {
                uint64_t cid;
                if (!pb_varint(&q, stop, &cid) || *ntargets == MAX_TARGETS || cid > UINT32_MAX) return 0;
                cids[(*ntargets)++] = cid;
            }
        } else {
            return 0;
        }
    }
    return 1;
}

/* A GS2 client's message (a binary frame's payload): relayed here as its SEND would be (the same
 * checks, the same buckets), or the room's (ROOMS: its connection reads it as before). */
static int gs2_packet(Lane *self, Entry *e, const unsigned char *payload, Py_ssize_t n, double now, PyObject *members,
                      PyObject *sessions, Plan *plan) {
    if (n > self->gs2_max_size) return ROOMS;
    int ok = plan->live == e ? 1 : connection_live(self, e, now, sessions);
    if (ok != 1) return ok;
    plan->live = e;
    const unsigned char *data;
    Py_ssize_t size, ntargets;
    uint64_t cids[MAX_TARGETS];
    if (!gs2_parse(self, payload, payload + n, &data, &size, cids, &ntargets)) return ROOMS;
    plan_begin(plan);
    ok = plan_message(self, plan, data, size, cids, ntargets, e, members);
    if (ok == 1) ok = spend(plan, e, now);
    if (ok != 1) return ok;
    queue_plan(self, e, plan, n, now);
    return TAKEN;
}

/* gs2_decode(data) -> (data, targets) | None: what `gs2_packet` would relay of a GS2 client's
 * message (after gs2_limits), for tests that hold it to wire.decode */
static PyObject *Lane_gs2_decode(Lane *self, PyObject *arg) {
    if (!PyBytes_Check(arg) || self->gs2_max_size == 0) {
        PyErr_SetString(PyExc_TypeError, "gs2_decode(bytes), after gs2_limits");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(arg), *data;
    Py_ssize_t n, ntargets;
    uint64_t cids[MAX_TARGETS];
    if (!gs2_parse(self, p, p + PyBytes_GET_SIZE(arg), &data, &n, cids, &ntargets)) Py_RETURN_NONE;
    PyObject *targets = PyTuple_New(ntargets);
    for (Py_ssize_t t = 0; targets != NULL && t < ntargets; t++) {
        PyObject *cid = PyLong_FromUnsignedLongLong(cids[t]);
        if (cid == NULL) Py_CLEAR(targets);
        else PyTuple_SET_ITEM(targets, t, cid);
    }
    return targets ? Py_BuildValue("(y#N)", (const char *)data, n, targets) : NULL;
}

/* the connection takes its reading back, with the bytes from `from` on (a frame the lane does
 * not read, or the stream's end) */
static void ws_hand_back(Lane *self, Entry *e, Py_ssize_t from) {
    PyObject *rest = PyBytes_FromStringAndSize((const char *)e->in + from, e->in_len - from);
    e->in_len = 0;
    if (flush(self, monotonic_now()) < 0) internal_error(self, "flush");
    PyObject *result = rest ? PyObject_CallMethodOneArg(e->conn, s_lane_hand_back.name, rest) : NULL;
    Py_XDECREF(rest);
    if (result == NULL) internal_error(self, "hand back");
    Py_XDECREF(result);
}

/* the end of a pass of WebSocket reads (the first at `first`): its output, then what is due */
static void ws_pass_end(Lane *self, double first) {
    if (flush(self, first) < 0) internal_error(self, "flush");
    run_hooks(self, self->ws_hooks, monotonic_now(), first);
}

/* ws_flush(): the end of a pass that read members' sockets: its output, then what is due then */
static PyObject *Lane_ws_flush(Lane *self, PyObject *unused) {
    if (self->room == NULL || self->reading || !self->ws_flush_pending) Py_RETURN_NONE;
    self->ws_flush_pending = 0;
    Py_INCREF(self);
    self->reading = 1;
    ws_pass_end(self, self->ws_first);
    return finish(self);
}

/* ws_read(entry): the loop's reader for a WebSocket member's socket */
static PyObject *Lane_ws_read(Lane *self, PyObject *arg) {
    if (Py_TYPE(arg) != &EntryType) {
        PyErr_SetString(PyExc_TypeError, "an Entry");
        return NULL;
    }
    Entry *e = (Entry *)arg;
    if (self->reading || e->fd < 0) Py_RETURN_NONE;
    if (self->room == NULL) { /* the lane let go of the room: the connection reads itself */
        e->in_len = 0;
        PyObject *nothing = PyBytes_FromStringAndSize("", 0);
        PyObject *result = nothing ? PyObject_CallMethodOneArg(e->conn, s_lane_hand_back.name, nothing) : NULL;
        Py_XDECREF(nothing);
        return result;
    }
    if (e->in_cap - e->in_len < 16384) {
        Py_ssize_t cap = e->in_cap ? e->in_cap : 32768;
        while (cap - e->in_len < 16384) cap *= 2;
        unsigned char *grown = PyMem_Realloc(e->in, cap);
        if (grown == NULL) return PyErr_NoMemory();
        e->in = grown, e->in_cap = cap;
    }
    ssize_t got = recv(e->fd, e->in + e->in_len, e->in_cap - e->in_len, MSG_DONTWAIT);
    Py_INCREF(self);
    Py_INCREF(e);
    self->reading = 1;
    if (got <= 0) {
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) goto out;
        /* its end, or an error: the connection's own transport reads it again and sees it */
        ws_hand_back(self, e, 0);
        goto done;
    }
    e->in_len += got;
    double now = monotonic_now();
    Pass pass;
    begin_pass(self, &pass);
    Py_ssize_t pos = 0;
    int handed = 0;
    while (!stopped(self) && e->fd >= 0) {
        Py_ssize_t avail = e->in_len - pos;
        if (avail < 2) break;
        unsigned char *f = e->in + pos;
        Py_ssize_t len = f[1] & 0x7F, hlen = 2;
        int control = (f[0] == 0x89 || f[0] == 0x8A) && len < 126; /* a ping or a pong */
        if ((f[0] != 0x82 && !control) || !(f[1] & 0x80) || len == 127) {
            /* not a masked, whole binary frame, nor a ping or pong: Python's */
            count_pending(self);
            ws_hand_back(self, e, pos);
            handed = 1;
            break;
        }
        if (len == 126) {
            if (avail < 4) break;
            len = (Py_ssize_t)be(f + 2, 2), hlen = 4;
        }
        if (avail < hlen + 4 + len) break;
        unsigned char *mask = f + hlen, *payload = f + hlen + 4;
        for (Py_ssize_t k = 0; k < len; k++) payload[k] ^= mask[k & 3];
        pos += hlen + 4 + len;
        if (control) { /* answered, or a sign of life, by the connection; its reading stays here */
            plan_forget(pass.plan);
            count_pending(self);
            PyObject *opcode = PyLong_FromLong(f[0] & 0x0F), *data = PyBytes_FromStringAndSize((const char *)payload, len),
                     *stamp = PyFloat_FromDouble(now), *result = NULL;
            if (opcode && data && stamp)
                result = PyObject_CallMethodObjArgs(e->conn, s_lane_control.name, opcode, data, stamp, NULL);
            Py_XDECREF(opcode);
            Py_XDECREF(data);
            Py_XDECREF(stamp);
            if (result == NULL) internal_error(self, "control frame");
            Py_XDECREF(result);
            continue;
        }
        int handled = ROOMS;
        if (!pass.busy) {
            handled = e->kind == KIND_GS2
                          ? gs2_packet(self, e, payload, len, now, pass.members, pass.sessions, pass.plan)
                          : ws_packet(self, e, payload, len, now, pass.members, pass.sessions, pass.plan, pass.plain);
            if (handled < 0) {
                internal_error(self, "frame");
                handled = ROOMS;
            }
        }
        Frame frame = {e, payload, len};
        account(self, handled, &pass, now, hand_frame, &frame);
    }
    count_pending(self);
    if (!handed && e->fd >= 0 && pos > 0) { /* what is not yet a whole frame waits for the next read */
        memmove(e->in, e->in + pos, e->in_len - pos);
        e->in_len -= pos;
    } else if (e->fd < 0 && !handed && pos < e->in_len && !stopped(self)) {
        /* the connection left the lane during the read (the room closed it on a BYE, say): what
         * came behind that frame is the connection's to read, a client's close frame above all */
        ws_hand_back(self, e, pos);
    } else if (e->fd < 0) {
        e->in_len = 0;
    }
    /* the pass's output leaves once, at its end, whichever of its members' sockets were read
     * (each recipient gets one packet of what they all sent, as from the room's flush); at the
     * read's end where no other read of the pass could share it */
    if (!stopped(self) && !self->ws_flush_pending && self->ws_schedule != NULL) {
        if (ws_flush_now(self)) {
            ws_pass_end(self, now);
        } else {
            self->ws_flush_pending = 1, self->ws_first = now;
            PyObject *result = PyObject_CallNoArgs(self->ws_schedule);
            if (result == NULL) {
                self->ws_flush_pending = 0;
                internal_error(self, "schedule");
                if (flush(self, now) < 0) internal_error(self, "flush");
            }
            Py_XDECREF(result);
        }
    }
    end_pass(&pass);
out:
done:
    Py_DECREF(e);
    return finish(self);
}

static PyObject *Lane_close(Lane *self, PyObject *unused) {
    self->fd = -1; /* the socket is its owner's to close: nothing more is read or sent on it */
    if (self->reading) /* a callback of read(): it lets go at its end */
        self->closing = 1;
    else
        Lane_clear(self);
    Py_RETURN_NONE;
}

static PyObject *Lane_get_fast(Lane *self, void *c) { return PyLong_FromUnsignedLongLong(self->fast); }
static PyObject *Lane_get_punted(Lane *self, void *c) { return PyLong_FromUnsignedLongLong(self->punted); }
static PyObject *Lane_get_entries(Lane *self, void *c) {
    return PyLong_FromSsize_t(self->by_sid ? PyDict_GET_SIZE(self->by_sid) : 0);
}

static PyMethodDef Lane_methods[] = {
    {"read", (PyCFunction)Lane_read, METH_NOARGS, "read(): the socket's datagrams, up to a batch (the loop's reader)"},
    {"offer", (PyCFunction)(void (*)(void))Lane_offer, METH_FASTCALL,
     "offer(session, member, path, name) -> bool: the session's packets may be taken here"},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, "close(): lets go of the room; read() does nothing after"},
    {"ws_limits", (PyCFunction)(void (*)(void))Lane_ws_limits, METH_FASTCALL, "ws_limits(max_payload, max_plaintext, send_buffer)"},
    {"ws_offer", (PyCFunction)(void (*)(void))Lane_ws_offer, METH_FASTCALL,
     "ws_offer(session, member, fd, conn, transport, recipient=None) -> Entry | None"},
    {"gs2_limits", (PyCFunction)(void (*)(void))Lane_gs2_limits, METH_FASTCALL, "gs2_limits(key, started, max_size)"},
    {"gs2_decode", (PyCFunction)Lane_gs2_decode, METH_O, "gs2_decode(data) -> (data, targets) | None (tests)"},
    {"ws_forget", (PyCFunction)Lane_ws_forget, METH_O, "ws_forget(entry): its connection reads itself again"},
    {"ws_read", (PyCFunction)Lane_ws_read, METH_O, "ws_read(entry): the loop's reader for its socket"},
    {"ws_flush", (PyCFunction)Lane_ws_flush, METH_NOARGS, "ws_flush(): the end of a pass of WebSocket reads"},
    {NULL},
};

static PyGetSetDef Lane_getset[] = {
    {"fast", (getter)Lane_get_fast, NULL, "datagrams relayed here", NULL},
    {"punted", (getter)Lane_get_punted, NULL, "datagrams handed to the room", NULL},
    {"entries", (getter)Lane_get_entries, NULL, "sessions offered and kept", NULL},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.server._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Lane(fd, room, counters, punt, punt_opened, max_payload, max_plaintext): the room's UDP port in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

/* ---- module ---------------------------------------------------------------------------------- */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay.server._lane",
    .m_doc = "The room's UDP port and members' WebSocket connections read in C (relay/server/links.py).",
    .m_size = -1,
};

static int intern(Attr *attr, const char *text) {
    if (attr->name == NULL) attr->name = PyUnicode_InternFromString(text);
    return attr->name == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&EntryType) < 0 || PyType_Ready(&LaneType) < 0) return NULL;
    if (aead == NULL && (aead = PyCapsule_Import(AEAD_CAPSULE, 0)) == NULL) return NULL;
    if (pacers == NULL) {
        PyObject *built = PyImport_ImportModule("relay.server._pacing"); /* the capsule's module, imported */
        if (built == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_ImportError)) return NULL;
            PyErr_Clear(); /* not built: a pacer is Python's, its hook called at each window's end */
        } else {
            Py_DECREF(built);
            if ((pacers = PyCapsule_Import(PACER_CAPSULE, 0)) == NULL) return NULL;
        }
    }
    if (bucket_type == NULL) {
        PyObject *ratelimit = PyImport_ImportModule("relay.server._ratelimit");
        if (ratelimit == NULL) return NULL;
        bucket_type = (PyTypeObject *)PyObject_GetAttrString(ratelimit, "TokenBucket");
        Py_DECREF(ratelimit);
        if (bucket_type == NULL) return NULL;
    }
    if (intern(&s_sid, "sid") || intern(&s_member, "member") || intern(&s_session, "session") ||
        intern(&s_path, "path") || intern(&s_validated, "validated") || intern(&s_addr, "addr") ||
        intern(&s_muted_until, "muted_until") || intern(&s_over_since, "over_since") ||
        intern(&s_opener, "opener") || intern(&s_sealer, "sealer") || intern(&s_msg_bucket, "msg_bucket") ||
        intern(&s_byte_bucket, "byte_bucket") || intern(&s_prefix, "prefix") || intern(&s_sessions, "sessions") ||
        intern(&s_members, "members") || intern(&s_flush_scheduled, "_flush_scheduled") || intern(&s_held, "held") ||
        intern(&s_shed_optional, "shed_optional") || intern(&s_udp_backlogged, "udp_backlogged") ||
        intern(&s_closed, "closed") || intern(&s_last_seen, "last_seen") ||
        intern(&s_last_activity, "last_activity") || intern(&s_packets_in, "packets_in") ||
        intern(&s_bytes_in, "bytes_in") || intern(&s_messages_in, "messages_in") ||
        intern(&s_messages_out, "messages_out") || intern(&s_packets_out, "packets_out") ||
        intern(&s_bytes_out, "bytes_out") || intern(&s_drops, "drops") ||
        intern(&s_observe_fanout, "observe_fanout") || intern(&s_fanout_buckets, "fanout_buckets") ||
        intern(&s_fanout_ns, "fanout_ns") || intern(&s_decrypt_failures, "decrypt_failures") ||
        intern(&s_write, "write") || intern(&s_get_write_buffer_size, "get_write_buffer_size") ||
        intern(&s_is_closing, "is_closing") ||
        intern(&s_overflow, "overflow") || intern(&s_lane_binary, "lane_binary") ||
        intern(&s_lane_hand_back, "lane_hand_back") || intern(&s_lane_control, "lane_control") ||
        intern(&s_seq_cell, "seq_cell"))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 || PyModule_AddIntConstant(m, "MAX_PACKET", MAX_PACKET) < 0 ||
        PyModule_AddIntConstant(m, "SEND", SEND_CODE) < 0 || PyModule_AddIntConstant(m, "DATA", TYPE_DATA) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
