/* DATA sealing and opening in C (docs/protocol.md sections 4 and 6): relay/protocol/packets.py's
 * Sealer and Opener with the same interface, used when this extension is built.
 *
 * Why: a relay process per room is woken for each datagram, and what the wake-up touches is what
 * it costs (docs/architecture.md). `cryptography`'s AESGCM sets its key up again on each call and
 * the Python around it builds the header, the nonce and the output in several objects; here each
 * direction keeps one OpenSSL context with the key scheduled once, and a packet is sealed or
 * opened in one call that writes the header, ciphertext and tag into the one bytes object
 * returned. The replay window is here too, so an open is one call from the room.
 *
 * Nothing else changes: AES-256-GCM, a 12-byte nonce of four zero bytes and the header's 8-byte
 * counter, the 16-byte header as associated data; the packets are byte for byte those of the
 * Python implementation (tests/vectors). A counter never wraps: at 2**64 - 1 sealing refuses.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "_aead.h"

#define VERSION 1      /* PROTOCOL_VERSION */
#define TYPE_DATA 3    /* PacketType.DATA */
#define HEADER_SIZE 16 /* version, type, flags (2), session id (4), counter (8); big-endian */
#define TAG_SIZE 16
#define KEY_SIZE 32
#define NONCE_SIZE 12
#define WINDOW 1024 /* REPLAY_WINDOW: counters this far behind the newest may still arrive */
/* The bitmap is twice the window: advancing clears whole 64-bit words ahead of the newest
 * counter, and with the extra room those words never hold a counter still inside the window
 * (RFC 6479). */
#define MAP_WORDS (2 * WINDOW / 64)

static PyObject *protocol_error; /* relay.protocol.constants.ProtocolError */

static void raise_protocol(const char *reason, PyObject *detail) {
    PyObject *args = detail ? Py_BuildValue("(sO)", reason, detail) : Py_BuildValue("(s)", reason);
    if (args == NULL) return;
    PyErr_SetObject(protocol_error, args);
    Py_DECREF(args);
}

static int openssl_failed(void) {
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL AES-256-GCM failed");
    return -1;
}

static EVP_CIPHER_CTX *new_context(PyObject *key, int encrypt) {
    char *bytes;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(key, &bytes, &size) < 0) return NULL;
    if (size != KEY_SIZE) {
        PyErr_SetString(PyExc_ValueError, "a DATA key is 32 bytes");
        return NULL;
    }
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    int ok = encrypt ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, (unsigned char *)bytes, NULL)
                     : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, (unsigned char *)bytes, NULL);
    if (ok != 1) {
        EVP_CIPHER_CTX_free(ctx);
        openssl_failed();
        return NULL;
    }
    return ctx;
}

static void put_be(unsigned char *out, uint64_t value, int size) {
    for (int i = size - 1; i >= 0; i--) {
        out[i] = (unsigned char)value;
        value >>= 8;
    }
}

static int as_u64(PyObject *value, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* ---- Sealer ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD EVP_CIPHER_CTX *ctx;
    uint32_t session_id;
    uint64_t counter; /* the last counter used: the next packet takes counter + 1 */
} Sealer;

static int Sealer_init(Sealer *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"key", "session_id", "counter", NULL};
    PyObject *key, *sid, *counter = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "SO|O", names, &key, &sid, &counter)) return -1;
    unsigned long session_id = PyLong_AsUnsignedLong(sid);
    if (session_id == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (session_id > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a session id is 32 bits");
        return -1;
    }
    uint64_t start = 0;
    if (counter != NULL && as_u64(counter, &start) < 0) return -1;
    EVP_CIPHER_CTX *ctx = new_context(key, 1);
    if (ctx == NULL) return -1;
    if (self->ctx != NULL) EVP_CIPHER_CTX_free(self->ctx);
    self->ctx = ctx;
    self->session_id = (uint32_t)session_id;
    self->counter = start;
    return 0;
}

static void Sealer_dealloc(Sealer *self) {
    if (self->ctx != NULL) EVP_CIPHER_CTX_free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The packet with the next counter into `out` (HEADER_SIZE + size + TAG_SIZE bytes); 0, or -1
 * with an exception set and the counter not spent. */
static int seal_raw(Sealer *self, const unsigned char *plain, Py_ssize_t size, unsigned char *out) {
    if (self->ctx == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Sealer not initialised");
        return -1;
    }
    if (size > INT_MAX - HEADER_SIZE - TAG_SIZE) {
        PyErr_SetString(PyExc_OverflowError, "plaintext too long");
        return -1;
    }
    if (self->counter == UINT64_MAX) { /* the next nonce would repeat one: never */
        PyErr_SetString(PyExc_OverflowError, "DATA counter exhausted");
        return -1;
    }
    uint64_t counter = self->counter + 1;
    out[0] = VERSION;
    out[1] = TYPE_DATA;
    out[2] = out[3] = 0;
    put_be(out + 4, self->session_id, 4);
    put_be(out + 8, counter, 8);
    unsigned char nonce[NONCE_SIZE] = {0};
    memcpy(nonce + 4, out + 8, 8);
    int n;
    if (EVP_EncryptInit_ex(self->ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_EncryptUpdate(self->ctx, NULL, &n, out, HEADER_SIZE) != 1 ||
        (size && EVP_EncryptUpdate(self->ctx, out + HEADER_SIZE, &n, plain, (int)size) != 1) ||
        EVP_EncryptFinal_ex(self->ctx, out + HEADER_SIZE + size, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, out + HEADER_SIZE + size) != 1)
        return openssl_failed();
    self->counter = counter; /* spent only once the packet exists */
    return 0;
}

static PyObject *seal_into(Sealer *self, const unsigned char *plain, Py_ssize_t size) {
    if (size > INT_MAX - HEADER_SIZE - TAG_SIZE) {
        PyErr_SetString(PyExc_OverflowError, "plaintext too long");
        return NULL;
    }
    PyObject *packet = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + size + TAG_SIZE);
    if (packet == NULL) return NULL;
    if (seal_raw(self, plain, size, (unsigned char *)PyBytes_AS_STRING(packet)) < 0) {
        Py_DECREF(packet);
        return NULL;
    }
    return packet;
}

static PyObject *Sealer_seal(Sealer *self, PyObject *plaintext) {
    if (PyBytes_CheckExact(plaintext))
        return seal_into(self, (unsigned char *)PyBytes_AS_STRING(plaintext), PyBytes_GET_SIZE(plaintext));
    Py_buffer view;
    if (PyObject_GetBuffer(plaintext, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *packet = seal_into(self, view.buf, view.len);
    PyBuffer_Release(&view);
    return packet;
}

static PyObject *Sealer_get_counter(Sealer *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->counter);
}

static int Sealer_set_counter(Sealer *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "counter cannot be deleted");
        return -1;
    }
    return as_u64(value, &self->counter);
}

static PyObject *Sealer_get_session_id(Sealer *self, void *closure) {
    return PyLong_FromUnsignedLong(self->session_id);
}

static PyMethodDef Sealer_methods[] = {
    {"seal", (PyCFunction)Sealer_seal, METH_O, "seal(plaintext) -> the DATA packet with the next counter"},
    {NULL},
};

static PyGetSetDef Sealer_getset[] = {
    {"counter", (getter)Sealer_get_counter, (setter)Sealer_set_counter, "the last counter used", NULL},
    {"session_id", (getter)Sealer_get_session_id, NULL, "the session id in every header", NULL},
    {NULL},
};

static PyTypeObject SealerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.protocol._aead.Sealer",
    .tp_basicsize = sizeof(Sealer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sealer(key, session_id, counter=0): one direction's DATA packets, counter nonces.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sealer_init,
    .tp_dealloc = (destructor)Sealer_dealloc,
    .tp_methods = Sealer_methods,
    .tp_getset = Sealer_getset,
};

/* ---- Opener ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD EVP_CIPHER_CTX *ctx;
    int strict; /* WebSocket: counters strictly increase */
    uint64_t top; /* the newest counter accepted (0: none; counter 0 counts as seen) */
    uint64_t map[MAP_WORDS];
} Opener;

static int Opener_init(Opener *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"key", "strict", NULL};
    PyObject *key;
    int strict = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "S|p", names, &key, &strict)) return -1;
    EVP_CIPHER_CTX *ctx = new_context(key, 0);
    if (ctx == NULL) return -1;
    if (self->ctx != NULL) EVP_CIPHER_CTX_free(self->ctx);
    self->ctx = ctx;
    self->strict = strict;
    self->top = 0;
    memset(self->map, 0, sizeof self->map);
    self->map[0] = 1;
    return 0;
}

static void Opener_dealloc(Opener *self) {
    if (self->ctx != NULL) EVP_CIPHER_CTX_free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline int window_fresh(const Opener *self, uint64_t counter) {
    if (counter > self->top) return 1;
    if (self->strict || self->top - counter >= WINDOW) return 0;
    return !((self->map[(counter >> 6) % MAP_WORDS] >> (counter & 63)) & 1);
}

static inline void window_take(Opener *self, uint64_t counter) {
    if (counter > self->top) {
        uint64_t from = (self->top >> 6) + 1, to = counter >> 6;
        if (to - from + 1 >= MAP_WORDS || to < from - 1)
            memset(self->map, 0, sizeof self->map);
        else
            for (uint64_t word = from; word <= to; word++) self->map[word % MAP_WORDS] = 0;
        self->top = counter;
    }
    self->map[(counter >> 6) % MAP_WORDS] |= (uint64_t)1 << (counter & 63);
}

/* Opens a DATA packet of `size` bytes (at least HEADER_SIZE + TAG_SIZE, at most INT_MAX) into
 * `out` (size - HEADER_SIZE - TAG_SIZE bytes): OPENED, REPLAYED or FORGED (nothing changed), or
 * -1 with an exception set (OpenSSL failed). */
static int open_raw(Opener *self, const unsigned char *in, Py_ssize_t size, uint64_t counter, unsigned char *out) {
    if (self->ctx == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Opener not initialised");
        return -1;
    }
    if (!window_fresh(self, counter)) return REPLAYED;
    Py_ssize_t plain_size = size - HEADER_SIZE - TAG_SIZE;
    unsigned char nonce[NONCE_SIZE] = {0};
    memcpy(nonce + 4, in + 8, 8);
    int n;
    if (EVP_DecryptInit_ex(self->ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_DecryptUpdate(self->ctx, NULL, &n, in, HEADER_SIZE) != 1 ||
        (plain_size && EVP_DecryptUpdate(self->ctx, out, &n, in + HEADER_SIZE, (int)plain_size) != 1) ||
        EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, (void *)(in + size - TAG_SIZE)) != 1)
        return openssl_failed();
    if (EVP_DecryptFinal_ex(self->ctx, out + plain_size, &n) != 1) return FORGED; /* the tag did not verify */
    window_take(self, counter); /* only authenticated packets move the window */
    return OPENED;
}

static PyObject *Opener_open(Opener *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "open(packet, counter)");
        return NULL;
    }
    if (self->ctx == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Opener not initialised");
        return NULL;
    }
    PyObject *packet = args[0];
    if (!PyBytes_Check(packet)) {
        PyErr_SetString(PyExc_TypeError, "packet must be bytes");
        return NULL;
    }
    uint64_t counter;
    if (as_u64(args[1], &counter) < 0) return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(packet);
    if (size < HEADER_SIZE + TAG_SIZE) {
        raise_protocol("short", NULL);
        return NULL;
    }
    if (size > INT_MAX) {
        raise_protocol("oversize", NULL);
        return NULL;
    }
    PyObject *plain = PyBytes_FromStringAndSize(NULL, size - HEADER_SIZE - TAG_SIZE);
    if (plain == NULL) return NULL;
    int result = open_raw(self, (const unsigned char *)PyBytes_AS_STRING(packet), size, counter,
                          (unsigned char *)PyBytes_AS_STRING(plain));
    if (result == OPENED) return plain;
    Py_DECREF(plain);
    if (result == REPLAYED) {
        PyObject *detail = PyObject_Str(args[1]);
        if (detail == NULL) return NULL;
        raise_protocol("replay", detail);
        Py_DECREF(detail);
    } else if (result == FORGED) {
        raise_protocol("decrypt", NULL);
    }
    return NULL;
}

static PyObject *Opener_get_top(Opener *self, void *closure) { return PyLong_FromUnsignedLongLong(self->top); }

static PyObject *Opener_get_strict(Opener *self, void *closure) { return PyBool_FromLong(self->strict); }

static PyMethodDef Opener_methods[] = {
    {"open", (PyCFunction)(void (*)(void))Opener_open, METH_FASTCALL,
     "open(packet, counter) -> plaintext; ProtocolError 'replay' or 'decrypt'"},
    {NULL},
};

static PyGetSetDef Opener_getset[] = {
    {"top", (getter)Opener_get_top, NULL, "the newest counter accepted", NULL},
    {"strict", (getter)Opener_get_strict, NULL, "counters must strictly increase (WebSocket)", NULL},
    {NULL},
};

static PyTypeObject OpenerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.protocol._aead.Opener",
    .tp_basicsize = sizeof(Opener),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Opener(key, strict=False): one direction's DATA packets, authenticated, anti-replay.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Opener_init,
    .tp_dealloc = (destructor)Opener_dealloc,
    .tp_methods = Opener_methods,
    .tp_getset = Opener_getset,
};

/* ---- module ------------------------------------------------------------------------------- */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay.protocol._aead",
    .m_doc = "DATA sealing and opening in C (relay/protocol/packets.py uses it when built).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__aead(void) {
    if (PyType_Ready(&SealerType) < 0 || PyType_Ready(&OpenerType) < 0) return NULL;
    if (protocol_error == NULL) { /* the exception every opener of the project raises to drop */
        PyObject *constants = PyImport_ImportModule("relay.protocol.constants");
        if (constants == NULL) return NULL;
        protocol_error = PyObject_GetAttrString(constants, "ProtocolError");
        Py_DECREF(constants);
        if (protocol_error == NULL) return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "VERSION", VERSION) < 0 || PyModule_AddIntConstant(m, "DATA", TYPE_DATA) < 0 ||
        PyModule_AddIntConstant(m, "HEADER_SIZE", HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "TAG_SIZE", TAG_SIZE) < 0 || PyModule_AddIntConstant(m, "WINDOW", WINDOW) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    static AeadApi api = {&SealerType, &OpenerType, (AeadSeal)seal_raw, (AeadOpen)open_raw};
    PyObject *capsule = PyCapsule_New(&api, AEAD_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SealerType);
    if (PyModule_AddObject(m, "Sealer", (PyObject *)&SealerType) < 0) {
        Py_DECREF(&SealerType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&OpenerType);
    if (PyModule_AddObject(m, "Opener", (PyObject *)&OpenerType) < 0) {
        Py_DECREF(&OpenerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
