/* What relay/protocol/_aead.c lends other C code of the relay (relay/server/_lane.c, the UDP
 * path in C) through the capsule relay.protocol._aead._C_API: its Sealer and Opener types, and
 * a seal and an open that work in the caller's buffers, with no Python call and no object. */
#ifndef RELAY_AEAD_H
#define RELAY_AEAD_H

#include <Python.h>
#include <stdint.h>

#define AEAD_CAPSULE "relay.protocol._aead._C_API"

enum { OPENED = 0, REPLAYED = 1, FORGED = 2 };

/* seal(sealer, plaintext, size, out): the DATA packet with the sealer's next counter into out
 * (16 + size + 16 bytes); 0, or -1 with an exception set and no counter spent. */
typedef int (*AeadSeal)(PyObject *, const unsigned char *, Py_ssize_t, unsigned char *);
/* open(opener, packet, size, counter, out): a DATA packet of size bytes (32 to INT_MAX) whose
 * header says `counter`, its plaintext into out (size - 32 bytes); OPENED, REPLAYED or FORGED
 * (then nothing changed), or -1 with an exception set. */
typedef int (*AeadOpen)(PyObject *, const unsigned char *, Py_ssize_t, uint64_t, unsigned char *);

typedef struct {
    PyTypeObject *sealer_type;
    PyTypeObject *opener_type;
    AeadSeal seal;
    AeadOpen open;
} AeadApi;

#endif
