/*
 * udp_reference: the C reference the relay's speed is compared with. A per-packet UDP relay with
 * no rooms and no crypto: every datagram it reads goes out again to N fixed loopback ports, read
 * and written in batches (recvmmsg / sendmmsg), as a well-written native relay would. Plus the
 * sender and the receivers that drive it. Loopback only; every mode stops by itself.
 *
 *   cc -O2 -o udp_reference udp_reference.c
 *   udp_reference relay PORT SECONDS FANOUT FIRST_DEST [aead]
 *                                                        forward to FIRST_DEST .. FIRST_DEST+FANOUT-1
 *   udp_reference recv  PORT SECONDS                     count what arrives on PORT
 *   udp_reference send  PORT SECONDS SIZE [RATE]         SIZE-byte datagrams to PORT (RATE 0: flat out)
 *
 * The relay reads whatever has arrived (at least one datagram) and forwards it at once, so a slow
 * stream is forwarded datagram by datagram and a fast one in batches of up to 64.
 * Each mode prints one line that loadtest/baseline.py reads:
 *   relay: <in>/s in, <out>/s out, cpu <percent>%
 *   recv: <in>/s in
 *   send: <count> datagrams in <seconds> s = <rate>/s, cpu <percent>%
 * Rates and CPU count from the first datagram to the last one (the idle wait before the first
 * is not the relay's work). Written for this project (loadtest/baseline.py runs it).
 *
 * `aead` (built with -DWITH_AEAD and -lcrypto, OpenSSL): the relay's cryptography per datagram
 * on top, as a native data path would pay it: one AES-256-GCM open of a packet of the
 * datagram's size (the sender's datagrams are plain, so one sealed once is opened each time)
 * and one seal per recipient (a 16-byte header as associated data, a counter nonce), each
 * recipient sent header, ciphertext and tag: the relay's DATA packet, 16 bytes longer. The
 * keys are fixed and public: it measures the work, it protects nothing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#ifdef WITH_AEAD
#include <openssl/evp.h>
#endif

enum { VEC = 64, MAX_FANOUT = 16, DGRAM = 2048 };

struct clock_pair {
  double wall, cpu;
};

static struct clock_pair now_pair(void) {
  struct timespec ts;
  struct rusage ru;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  getrusage(RUSAGE_SELF, &ru);
  struct clock_pair p;
  p.wall = (double)ts.tv_sec + ts.tv_nsec / 1e9;
  p.cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
          (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  return p;
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void to_loopback(struct sockaddr_in *addr, int port) {
  memset(addr, 0, sizeof *addr);
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr->sin_port = htons((unsigned short)port);
}

/* A UDP socket with big buffers and a short receive timeout, so loops notice their end. */
static int udp_socket(void) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) {
    perror("socket");
    exit(1);
  }
  int buffer = 8 * 1024 * 1024;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
  struct timeval wait = {.tv_sec = 0, .tv_usec = 200 * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  return fd;
}

static unsigned char inbox[VEC][DGRAM];
static struct iovec in_vec[VEC];
static struct mmsghdr in_hdr[VEC];
static struct iovec out_vec[VEC * MAX_FANOUT];
static struct mmsghdr out_hdr[VEC * MAX_FANOUT];

enum { HEADER = 16, TAG = 16 };

#ifdef WITH_AEAD
static unsigned char sealed_out[VEC * MAX_FANOUT][DGRAM + TAG];
static unsigned char opened[DGRAM];
static unsigned char sealed_in[DGRAM + TAG]; /* the packet opened in each datagram's place */
static int sealed_in_len = -1;
static EVP_CIPHER_CTX *seal_ctx, *open_ctx;
static unsigned long long counter;

/* A context keyed once: each packet sets only its nonce, so the key schedule is not redone. */
static EVP_CIPHER_CTX *keyed(int encrypt, unsigned char first) {
  unsigned char key[32];
  for (int i = 0; i < 32; i++) key[i] = (unsigned char)(first + i);
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (!ctx || !EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL, encrypt)) {
    fputs("udp_reference: AES-256-GCM unavailable\n", stderr);
    exit(1);
  }
  return ctx;
}

/* header (16 bytes, the counter in its last 8) + n bytes of body -> header, ciphertext, tag */
static int seal(EVP_CIPHER_CTX *ctx, const unsigned char *header, const unsigned char *body, int n,
                unsigned char *out) {
  unsigned char nonce[12] = {0};
  int len = 0;
  memcpy(nonce + 4, header + 8, 8);
  memcpy(out, header, HEADER);
  if (!EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) || !EVP_EncryptUpdate(ctx, NULL, &len, header, HEADER) ||
      !EVP_EncryptUpdate(ctx, out + HEADER, &len, body, n) || !EVP_EncryptFinal_ex(ctx, out + HEADER + len, &len) ||
      !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG, out + HEADER + n))
    return -1;
  return HEADER + n + TAG;
}

static int open_packet(const unsigned char *packet, int size) {
  unsigned char nonce[12] = {0};
  int len = 0, n = size - HEADER - TAG;
  memcpy(nonce + 4, packet + 8, 8);
  return n >= 0 && EVP_DecryptInit_ex(open_ctx, NULL, NULL, NULL, nonce) &&
         EVP_DecryptUpdate(open_ctx, NULL, &len, packet, HEADER) &&
         EVP_DecryptUpdate(open_ctx, opened, &len, packet + HEADER, n) &&
         EVP_CIPHER_CTX_ctrl(open_ctx, EVP_CTRL_GCM_SET_TAG, TAG, (void *)(packet + HEADER + n)) &&
         EVP_DecryptFinal_ex(open_ctx, opened + len, &len) > 0;
}

static void put_header(unsigned char *header, unsigned long long ctr) {
  memset(header, 0, HEADER);
  header[0] = 1; /* version */
  header[1] = 2; /* DATA */
  header[7] = 1; /* session id 1 */
  for (int b = 0; b < 8; b++) header[15 - b] = (unsigned char)(ctr >> (8 * b));
}

/* The datagram's cryptography: an open in its place, then a seal per recipient. -1: it failed. */
static int aead_work(const unsigned char *datagram, int size, int fanout, int k) {
  int body = size > HEADER ? size - HEADER : 0;
  if (sealed_in_len != size + TAG) {
    unsigned char header[HEADER], zeros[DGRAM] = {0};
    EVP_CIPHER_CTX *in_seal = keyed(1, 32);
    put_header(header, 1);
    sealed_in_len = seal(in_seal, header, zeros, body, sealed_in);
    EVP_CIPHER_CTX_free(in_seal);
  }
  if (!open_packet(sealed_in, sealed_in_len)) return -1;
  for (int d = 0; d < fanout; d++) {
    unsigned char header[HEADER];
    put_header(header, ++counter);
    if (seal(seal_ctx, header, datagram + HEADER, body, sealed_out[k + d]) < 0) return -1;
  }
  return 0;
}
#endif

/* Reads until SECONDS after the first datagram (or one second of silence after it, or fifteen
 * seconds of nothing at all); with FANOUT > 0 sends every datagram to each destination. */
static int serve(int port, double seconds, int fanout, int first_dest, int aead) {
  (void)aead; /* read only when built WITH_AEAD */
  int fd = udp_socket();
  struct sockaddr_in self, dest[MAX_FANOUT];
  to_loopback(&self, port);
  if (bind(fd, (struct sockaddr *)&self, sizeof self) != 0) {
    perror("bind");
    return 1;
  }
  for (int d = 0; d < fanout; d++) to_loopback(&dest[d], first_dest + d);
  for (int i = 0; i < VEC; i++) {
    in_vec[i].iov_base = inbox[i];
    in_vec[i].iov_len = DGRAM;
    memset(&in_hdr[i], 0, sizeof in_hdr[i]);
    in_hdr[i].msg_hdr.msg_iov = &in_vec[i];
    in_hdr[i].msg_hdr.msg_iovlen = 1;
  }
  long received = 0, forwarded = 0;
  struct clock_pair first = {0, 0}, last = {0, 0};
  double opened = wall_now();
  int started = 0;
  for (;;) {
    /* MSG_WAITFORONE: whatever has arrived, at least one datagram; without it recvmmsg waits to
     * fill all VEC slots, holding the first datagrams of a slow stream back */
    int n = recvmmsg(fd, in_hdr, VEC, MSG_WAITFORONE, NULL);
    double t = wall_now();
    if (n <= 0) {
      if (started ? (t - last.wall > 1.0 || t - first.wall > seconds) : t - opened > 15.0) break;
      continue;
    }
    if (!started) {
      started = 1;
      first = now_pair();
    }
    received += n;
    int k = 0;
    for (int i = 0; i < n && fanout > 0; i++) {
#ifdef WITH_AEAD
      if (aead && aead_work(inbox[i], (int)in_hdr[i].msg_len, fanout, k) < 0) {
        fputs("udp_reference: AES-GCM failed\n", stderr);
        return 1;
      }
#endif
      for (int d = 0; d < fanout; d++, k++) {
        out_vec[k].iov_base = inbox[i];
        out_vec[k].iov_len = in_hdr[i].msg_len;
#ifdef WITH_AEAD
        if (aead) {
          out_vec[k].iov_base = sealed_out[k];
          out_vec[k].iov_len = in_hdr[i].msg_len + TAG;
        }
#endif
        memset(&out_hdr[k], 0, sizeof out_hdr[k]);
        out_hdr[k].msg_hdr.msg_name = &dest[d];
        out_hdr[k].msg_hdr.msg_namelen = sizeof dest[d];
        out_hdr[k].msg_hdr.msg_iov = &out_vec[k];
        out_hdr[k].msg_hdr.msg_iovlen = 1;
      }
    }
    for (int done = 0; done < k;) {
      int w = sendmmsg(fd, out_hdr + done, (unsigned)(k - done), 0);
      if (w <= 0) break; /* a full buffer: the rest is lost, as it would be on a network */
      done += w;
      forwarded += w;
    }
    last = now_pair();
    if (t - first.wall > seconds) break;
  }
  double span = last.wall > first.wall ? last.wall - first.wall : 1e-9;
  if (fanout > 0)
    printf("relay: %.0f datagrams/s in, %.0f/s out, cpu %.0f%%\n", received / span, forwarded / span,
           100.0 * (last.cpu - first.cpu) / span);
  else
    printf("recv: %.0f datagrams/s in\n", received / span);
  close(fd);
  return 0;
}

/* SIZE-byte datagrams to PORT for SECONDS, at RATE per second (0: as fast as they go). */
static int emit(int port, double seconds, int size, double rate) {
  int fd = udp_socket();
  struct sockaddr_in to;
  to_loopback(&to, port);
  if (size > DGRAM) size = DGRAM;
  for (int i = 0; i < VEC; i++) {
    memset(inbox[i], 'x', (size_t)size);
    out_vec[i].iov_base = inbox[i];
    out_vec[i].iov_len = (size_t)size;
    memset(&out_hdr[i], 0, sizeof out_hdr[i]);
    out_hdr[i].msg_hdr.msg_name = &to;
    out_hdr[i].msg_hdr.msg_namelen = sizeof to;
    out_hdr[i].msg_hdr.msg_iov = &out_vec[i];
    out_hdr[i].msg_hdr.msg_iovlen = 1;
  }
  struct clock_pair start = now_pair();
  long sent = 0;
  for (double t = start.wall; t < start.wall + seconds; t = wall_now()) {
    long batch = VEC;
    if (rate > 0) {
      long behind = (long)((t - start.wall) * rate) - sent;
      if (behind <= 0) {
        struct timespec nap = {.tv_sec = 0, .tv_nsec = 50 * 1000};
        nanosleep(&nap, NULL);
        continue;
      }
      if (behind < batch) batch = behind;
    }
    int w = sendmmsg(fd, out_hdr, (unsigned)batch, 0);
    if (w > 0) sent += w;
  }
  struct clock_pair end = now_pair();
  double span = end.wall - start.wall;
  printf("send: %ld datagrams in %.2f s = %.0f/s, cpu %.0f%%\n", sent, span, sent / span,
         100.0 * (end.cpu - start.cpu) / span);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  const char *usage = "usage: udp_reference relay PORT SECONDS FANOUT FIRST_DEST [aead] | recv PORT SECONDS | "
                      "send PORT SECONDS SIZE [RATE]\n";
  if (argc < 4) {
    fputs(usage, stderr);
    return 2;
  }
  int port = atoi(argv[2]);
  double seconds = atof(argv[3]);
  if (seconds > 60) seconds = 60; /* bounded, whatever it is asked */
  if (strcmp(argv[1], "relay") == 0 && argc >= 6) {
    int fanout = atoi(argv[4]);
    if (fanout < 0 || fanout > MAX_FANOUT) fanout = MAX_FANOUT;
    int aead = argc > 6 && strcmp(argv[6], "aead") == 0;
#ifdef WITH_AEAD
    if (aead) {
      seal_ctx = keyed(1, 0);
      open_ctx = keyed(0, 32);
    }
#else
    if (aead) {
      fputs("udp_reference: built without -DWITH_AEAD\n", stderr);
      return 2;
    }
#endif
    return serve(port, seconds, fanout, atoi(argv[5]), aead);
  }
  if (strcmp(argv[1], "recv") == 0) return serve(port, seconds, 0, 0, 0);
  if (strcmp(argv[1], "send") == 0 && argc >= 5)
    return emit(port, seconds, atoi(argv[4]), argc > 5 ? atof(argv[5]) : 0.0);
  fputs(usage, stderr);
  return 2;
}
