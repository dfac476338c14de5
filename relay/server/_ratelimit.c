/* Token buckets in C: relay/server/ratelimit.py's TokenBucket with the same interface, used when
 * this extension is built (the Python class, PyTokenBucket, stays as the fallback and the
 * reference its tests compare against).
 *
 * Why: the relay's UDP path in C (relay/server/_lane.c) takes each message's tokens from its
 * member's buckets without calling Python, and it can do so only where the buckets are C
 * objects whose layout it knows (relay/server/_ratelimit.h: the struct, and take and available
 * as static inline functions that this module's methods use too). For Python code nothing
 * changes: TokenBucket(rate, burst, now), take(amount, now) -> bool, available(now) -> float,
 * and rate, burst, tokens and stamp as float attributes it may read and write (the room gives a
 * token back with `bucket.tokens += 1`). The numbers are the Python class's bit for bit.
 *
 * Differences: the attributes are always floats (the Python class keeps ints it is given), the
 * arguments must be numbers even where the bucket is unlimited, and a wrong argument or a failed
 * attribute write changes nothing; take and available take their arguments by position only; the
 * type has no __dict__ and cannot be subclassed (relay/server/_lane.c checks the exact type).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_ratelimit.h"

static inline int as_double(PyObject *value, double *out) {
    if (PyFloat_CheckExact(value)) {
        *out = PyFloat_AS_DOUBLE(value);
        return 0;
    }
    double v = PyFloat_AsDouble(value); /* an int, or anything with __float__ or __index__ */
    if (v == -1.0 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

static int TokenBucket_init(TokenBucketObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"rate", "burst", "now", NULL};
    double rate, burst, now;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ddd:TokenBucket", names, &rate, &burst, &now)) return -1;
    self->rate = rate;
    self->burst = rate > burst ? rate : burst; /* Python's max(burst, rate) */
    self->tokens = self->burst;
    self->stamp = now;
    return 0;
}

static PyObject *TokenBucket_take(TokenBucketObject *self, PyObject *const *args, Py_ssize_t nargs) {
    double amount, now;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "take(amount, now) takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (as_double(args[0], &amount) < 0 || as_double(args[1], &now) < 0) return NULL;
    return PyBool_FromLong(bucket_take(self, amount, now));
}

static PyObject *TokenBucket_available(TokenBucketObject *self, PyObject *const *args, Py_ssize_t nargs) {
    double now;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "available(now) takes 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (as_double(args[0], &now) < 0) return NULL;
    return PyFloat_FromDouble(bucket_available(self, now));
}

static PyMethodDef TokenBucket_methods[] = {
    {"take", (PyCFunction)(void (*)(void))TokenBucket_take, METH_FASTCALL,
     "take(amount, now) -> whether `amount` tokens were there (then spent); unlimited: True"},
    {"available", (PyCFunction)(void (*)(void))TokenBucket_available, METH_FASTCALL,
     "available(now) -> the tokens there now, none taken (unlimited: infinite)"},
    {NULL, NULL, 0, NULL},
};

/* The four numbers as float attributes. Not T_DOUBLE members: CPython's setter for those stores
 * -1.0 before it finds the value is no number, and a bucket must not change on a failed write. */
#define FIELD(name)                                                                                \
    static PyObject *get_##name(TokenBucketObject *self, void *closure) {                          \
        (void)closure;                                                                             \
        return PyFloat_FromDouble(self->name);                                                     \
    }                                                                                              \
    static int set_##name(TokenBucketObject *self, PyObject *value, void *closure) {               \
        (void)closure;                                                                             \
        if (value == NULL) {                                                                       \
            PyErr_SetString(PyExc_TypeError, "a TokenBucket's " #name " cannot be deleted");       \
            return -1;                                                                             \
        }                                                                                          \
        return as_double(value, &self->name);                                                      \
    }
FIELD(rate)
FIELD(burst)
FIELD(tokens)
FIELD(stamp)
#undef FIELD

static PyGetSetDef TokenBucket_getset[] = {
    {"rate", (getter)get_rate, (setter)set_rate, "tokens a second; 0: unlimited", NULL},
    {"burst", (getter)get_burst, (setter)set_burst, "at most this many tokens", NULL},
    {"tokens", (getter)get_tokens, (setter)set_tokens, "the tokens there at `stamp`", NULL},
    {"stamp", (getter)get_stamp, (setter)set_stamp, "when `tokens` was counted", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TokenBucketType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.server._ratelimit.TokenBucket",
    .tp_basicsize = sizeof(TokenBucketObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TokenBucket(rate, burst, now): `rate` tokens a second up to `burst`; rate 0: unlimited.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TokenBucket_init,
    .tp_methods = TokenBucket_methods,
    .tp_getset = TokenBucket_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay.server._ratelimit",
    .m_doc = "Token buckets in C: relay/server/ratelimit.py's TokenBucket, for relay/server/_lane.c.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__ratelimit(void) {
    if (PyType_Ready(&TokenBucketType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&TokenBucketType);
    if (PyModule_AddObject(m, "TokenBucket", (PyObject *)&TokenBucketType) < 0) {
        Py_DECREF(&TokenBucketType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
