/* relay/server/_ratelimit.c's TokenBucket, for other C code of the relay (relay/server/_lane.c,
 * the UDP path in C): the object's layout and its take and available, static inline, so a
 * member's buckets are spent with no Python call.
 *
 * A caller checks an object's type before casting it: Py_TYPE(obj) == the type
 * relay.server._ratelimit.TokenBucket (a subclass is not allowed: the type is final). The
 * arithmetic is relay/server/ratelimit.py's PyTokenBucket's, operation for operation, so the two
 * give the same doubles bit for bit. */
#ifndef RELAY_RATELIMIT_H
#define RELAY_RATELIMIT_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <math.h>

typedef struct {
    PyObject_HEAD double rate; /* tokens a second; 0: unlimited */
    double burst;              /* at most this many tokens */
    double tokens;             /* at `stamp` */
    double stamp;              /* the time `tokens` was counted at */
} TokenBucketObject;

/* min(burst, tokens + (now - stamp) * rate), as Python rounds it: the product is rounded to a
 * double before the sum (the volatile keeps a compiler from fusing them into one multiply-add,
 * which rounds once and would differ in the last bit). Python's min(a, b) is b if b < a else a. */
static inline double bucket_refilled(const TokenBucketObject *b, double now) {
    volatile double gained = (now - b->stamp) * b->rate;
    double tokens = b->tokens + gained;
    return tokens < b->burst ? tokens : b->burst;
}

/* take(amount, now): 1 if `amount` tokens were there (and are spent), 0 if not (the refill is
 * kept, nothing spent). Unlimited (rate 0): 1, and nothing changes. */
static inline int bucket_take(TokenBucketObject *b, double amount, double now) {
    if (b->rate == 0.0) return 1;
    double tokens = bucket_refilled(b, now);
    b->stamp = now;
    if (tokens < amount) {
        b->tokens = tokens;
        return 0;
    }
    b->tokens = tokens - amount;
    return 1;
}

/* available(now): the tokens there at `now`, none taken, nothing changed; unlimited: infinity. */
static inline double bucket_available(const TokenBucketObject *b, double now) {
    if (b->rate == 0.0) return INFINITY;
    return bucket_refilled(b, now);
}

#endif
