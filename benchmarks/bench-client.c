/*
 * bench-client: the benchmark's RPCAP client (benchmarks/forwarding.py).
 *
 * Like interop/rpcap-peer-client.c it drives the server only through
 * libpcap's public remote-capture API, but it does not print packets: it
 * counts packets and bytes (printing each packet in hex costs the interop
 * client about three times as much CPU per 1000-byte packet).  Built by
 * forwarding.py against the static libpcap in .peers/.
 *
 *   bench-client SOURCE --filter EXPR [--udp] [--timeout-ms N] [--idle-ms N]
 *                [--max-seconds S] [--count N]
 *
 * Protocol with the harness (JSON lines on stdout, commands on stdin):
 *   1. It opens SOURCE, sets the filter, and starts the capture (libpcap sends
 *      startcap on the first read), then prints {"ready":true,"linktype":N}.
 *   2. It counts packets until it has --count of them, or --max-seconds
 *      have passed, or the harness wrote a line on stdin (the replay is over)
 *      and no packet came for --idle-ms.
 *   3. It asks the server for pcap_stats and prints one summary line,
 *      {"packets":N,"bytes":B,"seconds":S,"stats":{...}} (S: from the first
 *      packet to the last), with the session still open, so the harness can
 *      read the server's CPU time before the session ends.
 *   4. On end of file on stdin it closes the capture and exits 0.
 * Errors: {"error":"..."} and exit status 2.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pcap/pcap.h>

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(const char *what, const char *why)
{
	/* Messages from libpcap hold no quotes or backslashes worth escaping here. */
	printf("{\"error\":\"%s: %s\"}\n", what, why);
	fflush(stdout);
	exit(2);
}

/* Non-blocking: has the harness written to stdin (or closed it)? */
static int stdin_ready(void)
{
	struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };

	return poll(&pfd, 1, 0) > 0;
}

int main(int argc, char **argv)
{
	char errbuf[PCAP_ERRBUF_SIZE] = "";
	const char *source, *filter = NULL;
	struct bpf_program prog;
	struct pcap_stat st;
	int flags = PCAP_OPENFLAG_PROMISCUOUS, timeout_ms = 100, idle_ms = 1000;
	double max_seconds = 60, start, last_packet, first_packet = 0, draining_since = 0;
	long count = 0, packets = 0;
	unsigned long long bytes = 0;
	pcap_t *p;
	char line[64];
	int i, ready = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s SOURCE --filter EXPR [--udp] [--timeout-ms N] "
		    "[--idle-ms N] [--max-seconds S] [--count N]\n", argv[0]);
		return 2;
	}
	source = argv[1];
	for (i = 2; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--udp") == 0)
			flags |= PCAP_OPENFLAG_DATATX_UDP;
		else if (i + 1 >= argc)
			fail("missing value for", a);
		else if (strcmp(a, "--filter") == 0)
			filter = argv[++i];
		else if (strcmp(a, "--timeout-ms") == 0)
			timeout_ms = atoi(argv[++i]);
		else if (strcmp(a, "--idle-ms") == 0)
			idle_ms = atoi(argv[++i]);
		else if (strcmp(a, "--max-seconds") == 0)
			max_seconds = atof(argv[++i]);
		else if (strcmp(a, "--count") == 0)
			count = atol(argv[++i]);
		else
			fail("unknown option", a);
	}
	/* libpcap's client sends a malformed startcap when no filter is set. */
	if (filter == NULL)
		fail("--filter", "is required");
	signal(SIGPIPE, SIG_IGN);

	p = pcap_open(source, 65535, flags, timeout_ms, NULL, errbuf);
	if (p == NULL)
		fail("pcap_open", errbuf);
	if (pcap_compile(p, &prog, filter, 1, PCAP_NETMASK_UNKNOWN) == -1)
		fail("pcap_compile", pcap_geterr(p));
	if (pcap_setfilter(p, &prog) == -1)
		fail("pcap_setfilter", pcap_geterr(p));
	pcap_freecode(&prog);

	/* The first read sends startcap: once it returns, the server is capturing. */
	start = last_packet = now_s();
	for (;;) {
		struct pcap_pkthdr *h;
		const u_char *data;
		int r = pcap_next_ex(p, &h, &data);

		if (r < 0 && r != PCAP_ERROR_BREAK)
			fail("pcap_next_ex", pcap_geterr(p));
		if (r == 1) {
			packets++;
			bytes += h->len;
			last_packet = now_s();
			if (packets == 1)
				first_packet = last_packet;
		}
		if (!ready) {
			printf("{\"ready\":true,\"linktype\":%d}\n", pcap_datalink(p));
			fflush(stdout);
			ready = 1;
		}
		if (r == PCAP_ERROR_BREAK || (count > 0 && packets >= count))
			break;
		/* Look at the clock and at stdin on timeouts and every 1024 packets. */
		if (r == 1 && (packets & 1023) != 0)
			continue;
		if (now_s() - start >= max_seconds)
			break;
		if (draining_since == 0 && stdin_ready())
			draining_since = now_s();
		if (draining_since != 0) {
			double quiet_since = last_packet > draining_since ? last_packet : draining_since;

			if ((now_s() - quiet_since) * 1000 >= idle_ms)
				break;
		}
	}

	memset(&st, 0, sizeof(st));
	if (pcap_stats(p, &st) == -1)
		fail("pcap_stats", pcap_geterr(p));
	printf("{\"packets\":%ld,\"bytes\":%llu,\"seconds\":%.6f,"
	    "\"stats\":{\"ps_recv\":%u,\"ps_drop\":%u,\"ps_ifdrop\":%u}}\n",
	    packets, bytes, packets ? last_packet - first_packet : 0.0, st.ps_recv, st.ps_drop, st.ps_ifdrop);
	fflush(stdout);

	/* Hold the session open until the harness closes stdin. */
	while (fgets(line, sizeof(line), stdin) != NULL)
		;
	pcap_close(p);
	return 0;
}
