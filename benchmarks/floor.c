/*
 * floor: the kernel's share of forwarding captured packets over loopback.
 *
 * A C sender pushes RPCAP packet messages, laid out exactly as a daemon
 * forwards captured frames of SIZE bytes, to a receiver on 127.0.0.1 at a
 * paced rate, and measures its own CPU time: what any daemon must pay to
 * hand those bytes to the kernel, with no capture and no interpreter.  On
 * loopback the sender's system calls also run the receive path (TCP/UDP
 * input, the wake-up of the receiver) in softirq on its own CPU, as the
 * daemons' do in benchmarks/forwarding.py.
 *
 *   floor tcp send|sendmsg|copy64k|idle SIZE RATE SECONDS [BURST]
 *   floor udp send|sendmmsg|gso|idle SIZE RATE SECONDS [BURST]
 *
 * What goes on the wire for each packet (docs/protocol.md): the 8-byte RPCAP
 * header (version 0, type 7, plen = 20 + SIZE), the 20-byte rpcap_pkthdr
 * (seconds, microseconds, caplen, len, packet number) and SIZE bytes of
 * packet.  Over TCP these messages follow each other in the stream; over
 * classic UDP each is one datagram (92 bytes at SIZE 64).
 *
 * Methods:
 *   tcp send      header and packet copied into one buffer, one send() per
 *                 packet: what libpcap 1.10.5's rpcapd does (daemon.c,
 *                 daemon_thrdatamain: sendbufidx = 0 ... sock_send per packet)
 *   tcp sendmsg   one sendmsg() per batch of 512 packets, two iovecs per
 *                 packet (header, packet bytes where they lie): rpcapsvc's
 *                 fastsend.send_stream
 *   tcp copy64k   messages copied into a 64000-byte buffer, one send() each
 *                 time the next one would not fit
 *   udp send      header and packet copied into one buffer, one send() per
 *                 datagram (libpcap's rpcapd over UDP)
 *   udp sendmmsg  one sendmmsg() per 256 datagrams, two iovecs each:
 *                 rpcapsvc's fastsend.send_datagrams
 *   udp gso       the same datagrams, but each run of up to 64 of them (and
 *                 at most 65000 bytes) is ONE message of the sendmmsg() of
 *                 256, two iovecs a datagram and a UDP_SEGMENT cmsg (the
 *                 datagram's size), so the kernel cuts the datagrams: what
 *                 rpcapsvc sends by default (fastsend.send_datagrams_segmented)
 *   idle          the pacing alone, nothing sent: what the sleeps cost
 *
 * Pacing: packets are sent in bursts, each burst when its last packet is due
 * (absolute CLOCK_MONOTONIC deadlines, clock_nanosleep in between): a burst
 * is one batch for sendmsg/sendmmsg/gso, BURST packets otherwise (default
 * RATE/1000: 1 ms).  BURST matters for TCP send: with Nagle (on, as in both
 * daemons) packets sent back to back leave in fewer segments than packets
 * spaced out, so the JSON has the TCP segments sent (TCP_INFO).  The timer
 * slack is 1 us so that short sleeps keep the rate.  RATE 0 sends as fast as
 * possible.  The packets' bytes come from a 4096-
 * packet region standing for the capture ring, read round-robin.
 *
 * The receiver is a child process (fork) draining as fast as it can: TCP
 * reads 1 MiB at a time until end of stream; UDP uses recvmmsg with an
 * 8 MiB SO_RCVBUF(FORCE) and counts datagrams, so loss is visible (UDP GSO
 * sends arrive already cut: one datagram each, as without GSO).
 *
 * Output: one JSON line on stdout.  CPU is the sender thread's run time from
 * /proc/thread-self/schedstat (what forwarding.py reads for the daemons) and
 * user/system time from getrusage(RUSAGE_SELF), both over the sending loop
 * only; the receiver's run time is reported apart; gso_sends counts the
 * messages gso handed the kernel (0 for the other methods).  Errors: a line on stderr
 * and exit status 2 (usage: 64).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <linux/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RPCAP_HEADER 8
#define PKTHDR 20
#define MESSAGE_HEADER (RPCAP_HEADER + PKTHDR)
#define TCP_BATCH 512   /* packets per sendmsg: 1024 iovecs = IOV_MAX */
#define UDP_BATCH 256   /* datagrams per sendmmsg */
#define COPY_BUFFER 64000
#define RING_PACKETS 4096
#define UDP_RCVBUF (8 << 20)
#define RECV_CHUNK (1 << 20)
#define MAX_SIZE 65535
#define GSO_MAX_SEGMENTS 64     /* fastsend.GSO_MAX_SEGMENTS */
#define GSO_MAX_PAYLOAD 65000   /* fastsend.GSO_MAX_PAYLOAD: bytes a send */
#define GSO_CONTROL CMSG_SPACE(sizeof(uint16_t))
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103         /* Linux >= 4.18 */
#endif

static void die(const char *what)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
	exit(2);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double deadline)
{
	struct timespec ts;
	ts.tv_sec = (time_t)deadline;
	ts.tv_nsec = (long)((deadline - ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* Run time of the calling thread so far, in ns (0 if schedstat is missing). */
static unsigned long long thread_runtime_ns(void)
{
	unsigned long long ns = 0;
	FILE *f = fopen("/proc/thread-self/schedstat", "r");
	if (f == NULL)
		return 0;
	if (fscanf(f, "%llu", &ns) != 1)
		ns = 0;
	fclose(f);
	return ns;
}

static double timeval_s(struct timeval tv)
{
	return tv.tv_sec + tv.tv_usec / 1e6;
}

/* --- the receiver ------------------------------------------------------- */

struct received {
	unsigned long long messages; /* datagrams (UDP) */
	unsigned long long bytes;
	unsigned long long runtime_ns;
};

static void receive_tcp(int listener, struct received *r)
{
	char *buf = malloc(RECV_CHUNK);
	int fd = accept(listener, NULL, NULL);
	if (fd < 0 || buf == NULL)
		die("receiver accept");
	close(listener);
	for (;;) {
		ssize_t n = recv(fd, buf, RECV_CHUNK, 0);
		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("receiver recv");
		}
		r->bytes += (unsigned long long)n;
	}
	close(fd);
}

/* Take every datagram waiting, without blocking. */
static void drain_udp(int fd, struct mmsghdr *msgs, struct received *r)
{
	for (;;) {
		int n = recvmmsg(fd, msgs, UDP_BATCH, MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR || errno == ECONNREFUSED)
				continue;
			die("receiver recvmmsg");
		}
		for (int i = 0; i < n; i++) {
			r->messages++;
			r->bytes += msgs[i].msg_len;
		}
	}
}

/* Until the sender closes `stop`: then whatever is still queued, and done. */
static void receive_udp(int fd, int stop, struct received *r)
{
	static char bufs[UDP_BATCH][2048];
	static struct iovec iov[UDP_BATCH];
	static struct mmsghdr msgs[UDP_BATCH];
	for (int i = 0; i < UDP_BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = sizeof bufs[i];
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	struct pollfd fds[2] = {{fd, POLLIN, 0}, {stop, POLLIN, 0}};
	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("receiver poll");
		}
		if (fds[0].revents)
			drain_udp(fd, msgs, r);
		if (fds[1].revents) {
			drain_udp(fd, msgs, r);
			return;
		}
	}
}

/* --- the sender --------------------------------------------------------- */

struct sender {
	int fd;
	int udp;
	size_t size;
	unsigned char *ring;    /* RING_PACKETS packets of `size` bytes */
	unsigned long long npkt;
	unsigned long long calls; /* system calls that sent */
	unsigned long long refused; /* UDP datagrams the kernel refused */
	/* copy64k */
	unsigned char *buffer;
	size_t used;
	/* sendmsg/sendmmsg/gso */
	unsigned char *headers;
	struct iovec *iov;
	struct mmsghdr *msgs;
	/* gso: datagrams a send, a cmsg and the datagram count of each message */
	unsigned gso_segments;
	unsigned char *control;
	unsigned *segments;
	unsigned long long gso_sends;
};

static void fill_header(unsigned char *h, size_t size, unsigned long long npkt)
{
	struct timespec ts;
	uint32_t w[7];
	/* The daemons stamp each packet with its capture time; reading the
	 * clock (vDSO) is the stand-in for copying it out of the ring. */
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	w[0] = htonl(0x00070000u);                 /* version 0, type 7, value 0 */
	w[1] = htonl((uint32_t)(PKTHDR + size));   /* plen */
	w[2] = htonl((uint32_t)ts.tv_sec);
	w[3] = htonl((uint32_t)(ts.tv_nsec / 1000));
	w[4] = htonl((uint32_t)size);              /* caplen */
	w[5] = htonl((uint32_t)size);              /* len */
	w[6] = htonl((uint32_t)npkt);
	memcpy(h, w, MESSAGE_HEADER);
}

static unsigned char *packet_bytes(struct sender *s)
{
	return s->ring + (s->npkt % RING_PACKETS) * s->size;
}

/* send() all of buf on a blocking socket (TCP), or one datagram (UDP). */
static void send_all(struct sender *s, const unsigned char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(s->fd, buf, len, MSG_NOSIGNAL);
		s->calls++;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (s->udp && (errno == ECONNREFUSED || errno == ENOBUFS)) {
				s->refused++;
				return;
			}
			die("send");
		}
		if (s->udp)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

/* One copy and one send per packet. */
static void burst_send(struct sender *s, unsigned count)
{
	unsigned char *msg = s->buffer;
	for (unsigned i = 0; i < count; i++) {
		fill_header(msg, s->size, ++s->npkt);
		memcpy(msg + MESSAGE_HEADER, packet_bytes(s), s->size);
		send_all(s, msg, MESSAGE_HEADER + s->size);
	}
}

static void flush_copy(struct sender *s)
{
	if (s->used > 0)
		send_all(s, s->buffer, s->used);
	s->used = 0;
}

/* Copy into the 64000-byte buffer; send when the next message would not fit. */
static void burst_copy64k(struct sender *s, unsigned count)
{
	size_t message = MESSAGE_HEADER + s->size;
	for (unsigned i = 0; i < count; i++) {
		if (s->used + message > COPY_BUFFER)
			flush_copy(s);
		fill_header(s->buffer + s->used, s->size, ++s->npkt);
		memcpy(s->buffer + s->used + MESSAGE_HEADER, packet_bytes(s), s->size);
		s->used += message;
	}
}

static void burst_idle(struct sender *s, unsigned count)
{
	s->npkt += count;
}

/* Headers into one array, two iovecs a packet: header, bytes in the ring. */
static void lay_out(struct sender *s, unsigned count)
{
	for (unsigned i = 0; i < count; i++) {
		unsigned char *h = s->headers + (size_t)i * MESSAGE_HEADER;
		fill_header(h, s->size, ++s->npkt);
		s->iov[2 * i].iov_base = h;
		s->iov[2 * i].iov_len = MESSAGE_HEADER;
		s->iov[2 * i + 1].iov_base = packet_bytes(s);
		s->iov[2 * i + 1].iov_len = s->size;
	}
}

static void burst_sendmsg(struct sender *s, unsigned count)
{
	lay_out(s, count);
	struct iovec *iov = s->iov;
	size_t iovcnt = 2 * (size_t)count;
	while (iovcnt > 0) {
		struct msghdr mh = {0};
		mh.msg_iov = iov;
		mh.msg_iovlen = iovcnt;
		ssize_t n = sendmsg(s->fd, &mh, MSG_NOSIGNAL);
		s->calls++;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("sendmsg");
		}
		/* A short send: step over what went. */
		size_t sent = (size_t)n;
		while (iovcnt > 0 && sent >= iov->iov_len) {
			sent -= iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (char *)iov->iov_base + sent;
			iov->iov_len -= sent;
		}
	}
}

static void burst_sendmmsg(struct sender *s, unsigned count)
{
	lay_out(s, count);
	for (unsigned i = 0; i < count; i++) {
		memset(&s->msgs[i], 0, sizeof s->msgs[i]);
		s->msgs[i].msg_hdr.msg_iov = &s->iov[2 * i];
		s->msgs[i].msg_hdr.msg_iovlen = 2;
	}
	unsigned done = 0;
	while (done < count) {
		int n = sendmmsg(s->fd, s->msgs + done, count - done, MSG_NOSIGNAL);
		s->calls++;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ECONNREFUSED || errno == ENOBUFS) {
				s->refused++;
				done++;
				continue;
			}
			die("sendmmsg");
		}
		done += (unsigned)n;
	}
}

/* Runs of gso_segments datagrams, each run one message of the sendmmsg with
 * a UDP_SEGMENT cmsg: the kernel cuts it into the datagrams.  A run of one
 * goes without the cmsg, as in fastsend.send_datagrams_segmented. */
static void burst_gso(struct sender *s, unsigned count)
{
	uint16_t segment = (uint16_t)(MESSAGE_HEADER + s->size);
	unsigned messages = 0;
	lay_out(s, count);
	for (unsigned start = 0; start < count; start += s->gso_segments, messages++) {
		unsigned n = count - start < s->gso_segments ? count - start : s->gso_segments;
		struct msghdr *mh = &s->msgs[messages].msg_hdr;
		memset(&s->msgs[messages], 0, sizeof s->msgs[messages]);
		mh->msg_iov = &s->iov[2 * start];
		mh->msg_iovlen = 2 * n;
		s->segments[messages] = n;
		if (n > 1) {
			mh->msg_control = s->control + (size_t)messages * GSO_CONTROL;
			mh->msg_controllen = GSO_CONTROL;
			struct cmsghdr *cm = CMSG_FIRSTHDR(mh);
			cm->cmsg_level = SOL_UDP;
			cm->cmsg_type = UDP_SEGMENT;
			cm->cmsg_len = CMSG_LEN(sizeof segment);
			memcpy(CMSG_DATA(cm), &segment, sizeof segment);
		}
	}
	s->gso_sends += messages;
	unsigned done = 0;
	while (done < messages) {
		int n = sendmmsg(s->fd, s->msgs + done, messages - done, MSG_NOSIGNAL);
		s->calls++;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ECONNREFUSED || errno == ENOBUFS) {
				s->refused += s->segments[done]; /* every datagram of the run */
				done++;
				continue;
			}
			die("sendmmsg with UDP_SEGMENT (UDP GSO needs Linux >= 4.18)");
		}
		done += (unsigned)n;
	}
}

/* TCP segments the sender's socket has sent so far (0 for UDP). */
static unsigned long long tcp_segments_out(struct sender *s)
{
	struct tcp_info info;
	socklen_t len = sizeof info;
	if (s->udp)
		return 0;
	memset(&info, 0, sizeof info);
	if (getsockopt(s->fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0)
		die("getsockopt TCP_INFO");
	return info.tcpi_segs_out;
}

static void usage(void)
{
	fprintf(stderr,
	    "usage: floor tcp send|sendmsg|copy64k|idle SIZE RATE SECONDS [BURST]\n"
	    "       floor udp send|sendmmsg|gso|idle SIZE RATE SECONDS [BURST]\n");
	exit(64);
}

int main(int argc, char **argv)
{
	if (argc != 6 && argc != 7)
		usage();
	const char *proto = argv[1], *method = argv[2];
	long size = strtol(argv[3], NULL, 10);
	double rate = strtod(argv[4], NULL);
	double seconds = strtod(argv[5], NULL);
	int udp = strcmp(proto, "udp") == 0;
	if (!udp && strcmp(proto, "tcp") != 0)
		usage();
	if (size < 1 || size > MAX_SIZE - MESSAGE_HEADER || rate < 0 || seconds <= 0)
		usage();

	void (*burst)(struct sender *, unsigned) = NULL;
	unsigned batch = 0;
	if (!udp && strcmp(method, "send") == 0)
		burst = burst_send;
	else if (!udp && strcmp(method, "sendmsg") == 0)
		burst = burst_sendmsg, batch = TCP_BATCH;
	else if (!udp && strcmp(method, "copy64k") == 0)
		burst = burst_copy64k;
	else if (udp && strcmp(method, "send") == 0)
		burst = burst_send;
	else if (udp && strcmp(method, "sendmmsg") == 0)
		burst = burst_sendmmsg, batch = UDP_BATCH;
	else if (udp && strcmp(method, "gso") == 0)
		burst = burst_gso, batch = UDP_BATCH;
	else if (strcmp(method, "idle") == 0)
		burst = burst_idle;
	else
		usage();
	unsigned long long total = rate > 0 ? (unsigned long long)(rate * seconds) : 0;
	/* Unpaced: a second's worth of bursts is judged by the clock instead. */
	unsigned per_burst = batch ? batch : (rate >= 1000 ? (unsigned)(rate / 1000) : 1);
	if (rate == 0 && !batch)
		per_burst = 100;
	if (argc == 7 && !batch) {
		long b = strtol(argv[6], NULL, 10);
		if (b < 1 || b > 1000000)
			usage();
		per_burst = (unsigned)b;
	}
	prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);

	/* The receiver's socket, then the receiver. */
	int rfd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
	if (rfd < 0)
		die("socket");
	struct sockaddr_in addr = {0};
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof addr;
	if (udp) {
		int rcvbuf = UDP_RCVBUF;
		if (setsockopt(rfd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
			setsockopt(rfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	}
	if (bind(rfd, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("bind");
	if (!udp && listen(rfd, 1) < 0)
		die("listen");
	if (getsockname(rfd, (struct sockaddr *)&addr, &alen) < 0)
		die("getsockname");
	int stop[2], report[2];
	if (pipe(stop) < 0 || pipe(report) < 0)
		die("pipe");
	fflush(stdout);
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		struct received r = {0};
		close(stop[1]);
		close(report[0]);
		if (udp)
			receive_udp(rfd, stop[0], &r);
		else
			receive_tcp(rfd, &r);
		r.runtime_ns = thread_runtime_ns();
		if (write(report[1], &r, sizeof r) != (ssize_t)sizeof r)
			die("receiver report");
		_exit(0);
	}
	close(stop[0]);
	close(report[1]);

	struct sender s = {0};
	s.udp = udp;
	s.size = (size_t)size;
	s.fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
	if (s.fd < 0)
		die("socket");
	if (connect(s.fd, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("connect");
	close(rfd); /* the receiver has its own */
	s.ring = malloc(RING_PACKETS * s.size);
	s.buffer = malloc(COPY_BUFFER > MESSAGE_HEADER + s.size ? COPY_BUFFER : MESSAGE_HEADER + s.size);
	s.headers = malloc((size_t)TCP_BATCH * MESSAGE_HEADER);
	s.iov = calloc(2 * TCP_BATCH, sizeof *s.iov);
	s.msgs = calloc(UDP_BATCH, sizeof *s.msgs);
	/* fastsend.gso_groups: up to 64 datagrams a send, 65000 bytes at most. */
	s.gso_segments = GSO_MAX_PAYLOAD / (MESSAGE_HEADER + s.size);
	if (s.gso_segments > GSO_MAX_SEGMENTS)
		s.gso_segments = GSO_MAX_SEGMENTS;
	if (s.gso_segments < 1)
		s.gso_segments = 1;
	s.control = calloc(UDP_BATCH, GSO_CONTROL);
	s.segments = calloc(UDP_BATCH, sizeof *s.segments);
	if (!s.ring || !s.buffer || !s.headers || !s.iov || !s.msgs || !s.control || !s.segments)
		die("malloc");
	for (size_t i = 0; i < RING_PACKETS * s.size; i++)
		s.ring[i] = (unsigned char)(i * 131 + 7);

	/* The sending loop, and only it, is measured. */
	unsigned long long segs0 = tcp_segments_out(&s);
	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	unsigned long long run0 = thread_runtime_ns();
	double start = now();
	unsigned long long bursts = 0, late = 0;
	for (;;) {
		unsigned count = per_burst;
		if (rate > 0) {
			if (s.npkt >= total)
				break;
			if (total - s.npkt < count)
				count = (unsigned)(total - s.npkt);
			double due = start + (s.npkt + count) / rate;
			if (now() < due)
				sleep_until(due);
			else
				late++;
		} else if (now() - start >= seconds) {
			break;
		}
		burst(&s, count);
		bursts++;
	}
	flush_copy(&s);
	double elapsed = now() - start;
	unsigned long long run1 = thread_runtime_ns();
	unsigned long long segments = tcp_segments_out(&s) - segs0;
	getrusage(RUSAGE_SELF, &ru1);

	/* The receiver: TCP sees the end of the stream; UDP gets a moment for
	 * datagrams still on their way, then the close of `stop`. */
	if (udp) {
		struct timespec pause = {0, 100 * 1000 * 1000};
		nanosleep(&pause, NULL);
	} else if (shutdown(s.fd, SHUT_WR) < 0) {
		die("shutdown");
	}
	close(stop[1]);
	struct received r = {0};
	if (read(report[0], &r, sizeof r) != (ssize_t)sizeof r) {
		fprintf(stderr, "floor: the receiver gave no report\n");
		exit(2);
	}
	int status;
	waitpid(child, &status, 0);
	close(s.fd);

	unsigned long long message = MESSAGE_HEADER + s.size;
	unsigned long long received = udp ? r.messages : r.bytes / message;
	double user = timeval_s(ru1.ru_utime) - timeval_s(ru0.ru_utime);
	double sys = timeval_s(ru1.ru_stime) - timeval_s(ru0.ru_stime);
	printf("{\"proto\":\"%s\",\"method\":\"%s\",\"size\":%ld,\"message_bytes\":%llu,"
	    "\"rate\":%.0f,\"seconds\":%.6f,\"sent\":%llu,\"calls\":%llu,\"bursts\":%llu,"
	    "\"burst\":%u,\"late_bursts\":%llu,\"refused\":%llu,\"tcp_segments\":%llu,"
	    "\"gso_sends\":%llu,"
	    "\"sender_runtime_s\":%.6f,\"sender_user_s\":%.6f,\"sender_sys_s\":%.6f,"
	    "\"received\":%llu,\"received_bytes\":%llu,\"receiver_runtime_s\":%.6f}\n",
	    proto, method, size, message, rate, elapsed, s.npkt, s.calls, bursts,
	    batch ? batch : per_burst, late, s.refused, segments, s.gso_sends, (run1 - run0) / 1e9, user, sys,
	    received, r.bytes, r.runtime_ns / 1e9);
	return 0;
}
