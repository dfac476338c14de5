/* relay/server/pacing.py's Pacer in C (the controller: CPU readings in, the pace out), whose layout
 * and step are relay/server/_pacing.h's, so that the lane (relay/server/_lane.c) samples an
 * unpaced relay's window itself. relay/server/pacing.py's PyPacer is the same in Python
 * (RELAY_PURE_PYTHON, or no C compiler); tests/server/test_pacing_native.py holds them to the same
 * doubles. The constants are pacing.py's, given here once by `configure` at its import. */
#include "_pacing.h"

#include <structmember.h>

static PacerConstants constants;
static int configured;

static int Pacer_init(PacerObject *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"budget", "max_pace", "pace", "share", "next_sample", "lane_due", NULL};
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "relay.server._pacing: configure() first (relay/server/pacing.py does)");
        return -1;
    }
    self->budget = 0.0, self->max_pace = 0.01, self->pace = 0.0, self->share = 0.0;
    self->next_sample = -INFINITY, self->lane_due = -INFINITY, self->has_last = 0;
    return PyArg_ParseTupleAndKeywords(args, kwds, "|dddddd:Pacer", names, &self->budget, &self->max_pace,
                                       &self->pace, &self->share, &self->next_sample, &self->lane_due)
               ? 0
               : -1;
}

static PyObject *Pacer_sample(PacerObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sample(now, cpu)");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[0]), cpu;
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    cpu = PyFloat_AsDouble(args[1]);
    if (cpu == -1.0 && PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble(pacer_sample(self, &constants, now, cpu));
}

static PyObject *Pacer_settle(PacerObject *self, PyObject *unused) {
    pacer_settle(self);
    Py_RETURN_NONE;
}

/* `_last`: (now, cpu) of the last reading, or None, as PyPacer keeps it */
static PyObject *Pacer_get_last(PacerObject *self, void *closure) {
    if (!self->has_last) Py_RETURN_NONE;
    return Py_BuildValue("(dd)", self->last_now, self->last_cpu);
}

static PyMethodDef Pacer_methods[] = {
    {"sample", (PyCFunction)(void (*)(void))Pacer_sample, METH_FASTCALL,
     "sample(now, cpu): `cpu`, the process's CPU seconds so far, read at `now` (seconds, monotonic); the pace"},
    {"settle", (PyCFunction)Pacer_settle, METH_NOARGS, "`lane_due` anew, after `pace` or `next_sample` changed"},
    {NULL},
};

static PyMemberDef Pacer_members[] = {
    {"budget", T_DOUBLE, offsetof(PacerObject, budget), 0, "cores; 0: never pace"},
    {"max_pace", T_DOUBLE, offsetof(PacerObject, max_pace), 0, NULL},
    {"pace", T_DOUBLE, offsetof(PacerObject, pace), 0, NULL},
    {"share", T_DOUBLE, offsetof(PacerObject, share), 0, "smoothed, of the budget"},
    {"next_sample", T_DOUBLE, offsetof(PacerObject, next_sample), 0, NULL},
    {"lane_due", T_DOUBLE, offsetof(PacerObject, lane_due), 0,
     "when the lane next samples this pacer, or tells the relay of a read (pacing.py's PyPacer.lane_due)"},
    {NULL},
};

static PyGetSetDef Pacer_getset[] = {
    {"_last", (getter)Pacer_get_last, NULL, "(now, cpu) of the last reading, or None", NULL},
    {NULL},
};

static PyTypeObject PacerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relay.server._pacing.Pacer",
    .tp_doc = "The pacer's controller (relay/server/pacing.py): `sample(now, cpu)` every WINDOW seconds or "
              "more; `pace` is what to keep.",
    .tp_basicsize = sizeof(PacerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT, /* final: C code casts by the exact type */
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pacer_init,
    .tp_methods = Pacer_methods,
    .tp_members = Pacer_members,
    .tp_getset = Pacer_getset,
};

static PyObject *configure(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *names[] = {"window",   "smoothing", "pace_target", "pace_on", "pace_at_once",
                            "pace_off", "max_step",  "min_pace",    NULL};
    PacerConstants k;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$dddddddd:configure", names, &k.window, &k.smoothing,
                                     &k.pace_target, &k.pace_on, &k.pace_at_once, &k.pace_off, &k.max_step,
                                     &k.min_pace))
        return NULL;
    if (!(k.window > 0 && k.max_step > 0 && k.pace_target > 0)) {
        PyErr_SetString(PyExc_ValueError, "window, max_step and pace_target must be positive");
        return NULL;
    }
    constants = k, configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, window, smoothing, pace_target, pace_on, pace_at_once, pace_off, max_step, min_pace): "
     "relay/server/pacing.py's constants"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay.server._pacing",
    .m_doc = "The pacer's controller in C (relay/server/pacing.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

static PacerApi api = {&PacerType, &constants};

PyMODINIT_FUNC PyInit__pacing(void) {
    if (PyType_Ready(&PacerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *capsule = PyCapsule_New(&api, PACER_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&PacerType);
    if (PyModule_AddObject(m, "Pacer", (PyObject *)&PacerType) < 0) {
        Py_DECREF(&PacerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
