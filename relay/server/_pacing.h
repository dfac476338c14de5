/* relay/server/_pacing.c's Pacer, for other C code of the relay (relay/server/_lane.c): the
 * object's layout and the controller's step, static inline, so the lane takes an unpaced relay's
 * CPU reading at the end of its window with no Python call (that call, met cold once a window in
 * every relay process of a host, was 7% of their CPU in the deployed shape: docs/architecture.md).
 *
 * The constants are relay/server/pacing.py's, given to relay.server._pacing at that module's
 * import (`configure`); a caller reaches them, and the type, through the module's capsule
 * (PACER_CAPSULE). A caller checks an object's type before casting it (the type is final). The
 * arithmetic is pacing.py's PyPacer's, operation for operation, so the two give the same doubles
 * bit for bit (Python's min(a, b) is b if b < a else a; max(a, b) is b if b > a else a). */
#ifndef RELAY_PACING_H
#define RELAY_PACING_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <math.h>

#define PACER_CAPSULE "relay.server._pacing._C_API"

typedef struct {
    double window, smoothing, pace_target, pace_on, pace_at_once, pace_off, max_step, min_pace;
} PacerConstants;

typedef struct {
    PyObject_HEAD double budget; /* cores; 0: never pace */
    double max_pace, pace, share, next_sample, lane_due;
    double last_now, last_cpu; /* the last reading, where `has_last` */
    int has_last;
} PacerObject;

typedef struct {
    PyTypeObject *type;
    const PacerConstants *k;
} PacerApi;

static inline double pacer_min(double a, double b) { return b < a ? b : a; }
static inline double pacer_max(double a, double b) { return b > a ? b : a; }

/* Pacer._step: the reading `cpu` (the process's CPU seconds) at `now` (monotonic seconds) */
static inline double pacer_step(PacerObject *p, const PacerConstants *k, double now, double cpu) {
    int had = p->has_last;
    double then = p->last_now, was = p->last_cpu;
    p->last_now = now, p->last_cpu = cpu, p->has_last = 1;
    p->next_sample = now + k->window;
    if (!had || now <= then) return p->pace;
    double budget = p->budget;
    if (budget <= 0) {
        p->pace = p->share = 0.0;
        return 0.0;
    }
    double reading = (cpu - was) / (now - then) / budget;
    if (reading >= k->pace_at_once) {
        p->share = pacer_max(p->share, k->pace_at_once);
        p->pace = p->max_pace;
        return p->pace;
    }
    volatile double moved = k->smoothing * (reading - p->share); /* rounded before the sum, as Python does */
    double share = p->share = p->share + moved;
    if (!p->pace) {
        if (share >= k->pace_on) p->pace = pacer_min(p->max_pace, k->min_pace);
        return p->pace;
    }
    double pace = p->pace * pacer_min(k->max_step, pacer_max(1 / k->max_step, share / k->pace_target));
    if (pace < k->min_pace) pace = share >= k->pace_off ? k->min_pace : 0.0;
    p->pace = pacer_min(p->max_pace, pace);
    return p->pace;
}

/* Pacer.settle: `lane_due` anew */
static inline void pacer_settle(PacerObject *p) { p->lane_due = p->pace ? -INFINITY : p->next_sample; }

/* Pacer.sample */
static inline double pacer_sample(PacerObject *p, const PacerConstants *k, double now, double cpu) {
    double pace = pacer_step(p, k, now, cpu);
    pacer_settle(p);
    return pace;
}

#endif
