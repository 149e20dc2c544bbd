/*
 * rpcap-peer-client: the interop test harness's stand-in for Wireshark.
 *
 * It drives a remote capture server (rpcapsvc, or libpcap's own rpcapd) using
 * ONLY libpcap's public remote-capture API (pcap_findalldevs_ex, pcap_open,
 * pcap_remoteact_accept*, ...), so what the server sees is exactly what any
 * libpcap-based application sends it.
 *
 * Output: JSON, one object per line on stdout, flushed after every line.
 * Errors: {"error": "..."} on stdout and exit status 2.
 *
 * Built by scripts/build-reference-peers.sh against a static libpcap
 * configured with --enable-remote; see the usage() text for the commands.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <pcap/pcap.h>

/* pcap_remoteact_accept_ex() appeared in libpcap 1.10. */
#ifdef PCAP_AVAILABLE_1_10_REMOTE
#define HAVE_REMOTEACT_ACCEPT_EX 1
#else
#define HAVE_REMOTEACT_ACCEPT_EX 0
#endif

/* libpcap < 1.10.5 called the socket type SOCKET. */
#ifndef PCAP_SOCKET
#define PCAP_SOCKET SOCKET
#endif

#define PROG "rpcap-peer-client"

static void usage(FILE *out)
{
	fputs(
"usage:\n"
"  " PROG " findalldevs URL [--user U --password P]\n"
"  " PROG " capture SOURCE [CAPTURE OPTIONS]\n"
"  " PROG " active --listen-host H --listen-port P [--timeout-s S] [--tls]\n"
"        [--user U --password P] findalldevs | capture IFACE [CAPTURE OPTIONS]\n"
"\n"
"  URL is rpcap://host:port/ (or rpcaps:// for TLS); SOURCE is URL followed\n"
"  by an interface name, e.g. rpcap://127.0.0.1:2002/lo.\n"
"\n"
"CAPTURE OPTIONS:\n"
"  --user U --password P     password authentication (default: null auth)\n"
"  --snaplen N               snapshot length (default 65535)\n"
"  --timeout-ms N            read timeout in ms (default 1000)\n"
"  --no-promisc              do not set PCAP_OPENFLAG_PROMISCUOUS\n"
"  --udp                     PCAP_OPENFLAG_DATATX_UDP: UDP data channel\n"
"  --nocapture-rpcap         PCAP_OPENFLAG_NOCAPTURE_RPCAP\n"
"  --filter EXPR             pcap_compile + pcap_setfilter before capturing\n"
"                            (without it pcap_setfilter is never called)\n"
"  --count N                 stop after N packets\n"
"  --max-seconds S           stop after S seconds overall (may be fractional)\n"
"  --update-filter-after K EXPR2\n"
"                            set filter EXPR2 after K packets\n"
"  --stop-reading-after K    after K packets, sleep --max-seconds without\n"
"                            reading, then exit\n"
"  --stats                   print pcap_stats at the end\n"
"  --sampling METHOD VALUE   pcap_setsampling before capturing: METHOD 1 is\n"
"                            PCAP_SAMP_1_EVERY_N, 2 PCAP_SAMP_FIRST_AFTER_N_MS\n"
"  --quiet                   print no packet lines (the count and stats only)\n"
"\n"
"active mode: wait (at most --timeout-s seconds, default 30) for an rpcapd\n"
"started with -a H,P to connect, then list its interfaces or capture IFACE.\n"
"\n"
"Output lines (JSON): {\"interfaces\":[...]} | {\"linktype\":N} |\n"
"  {\"caplen\":N,\"len\":N,\"ts\":\"sec.usec\",\"data\":\"hex\"} |\n"
"  {\"filter_updated\":true} | {\"stats\":{...}} | {\"accepted\":\"host\"} |\n"
"  {\"done\":true,\"packets\":N} | {\"error\":\"...\"} (exit status 2)\n", out);
}

/* ---------------------------------------------------------------- JSON -- */

static void json_string(FILE *out, const char *s)
{
	const unsigned char *p;

	if (s == NULL) {
		fputs("null", out);
		return;
	}
	fputc('"', out);
	for (p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"':  fputs("\\\"", out); break;
		case '\\': fputs("\\\\", out); break;
		case '\n': fputs("\\n", out); break;
		case '\r': fputs("\\r", out); break;
		case '\t': fputs("\\t", out); break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				fprintf(out, "\\u%04x", *p);
			else
				fputc(*p, out);
		}
	}
	fputc('"', out);
}

static void end_line(void)
{
	fputs("}\n", stdout);
	fflush(stdout);
}

/* Print {"error": "<formatted message>"} and exit with status 2. */
static void fail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fputs("{\"error\":", stdout);
	json_string(stdout, msg);
	end_line();
	exit(2);
}

/* Print the usage on stderr, then fail() with the message. */
static void usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	usage(stderr);
	fail("%s", msg);
}

/* ------------------------------------------------------------- options -- */

struct options {
	/* common */
	const char *user;
	const char *password;
	/* capture */
	int snaplen;
	int timeout_ms;
	int promisc;
	int udp;
	int nocapture_rpcap;
	const char *filter;
	long count;
	double max_seconds;
	long update_filter_after;
	const char *update_filter;
	long stop_reading_after;
	int stats;
	int sampling_method;
	int sampling_value;
	int quiet;
	/* active */
	const char *listen_host;
	const char *listen_port;
	int timeout_s;
	int tls;
};

static long parse_long(const char *opt, const char *val, long min)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(val, &end, 10);
	if (errno != 0 || *end != '\0' || end == val || v < min)
		fail("invalid value for %s: '%s'", opt, val);
	return v;
}

static double parse_double(const char *opt, const char *val)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(val, &end);
	if (errno != 0 || *end != '\0' || end == val || v < 0)
		fail("invalid value for %s: '%s'", opt, val);
	return v;
}

/*
 * Parse the options in argv[*i...]; stop at the first non-option argument
 * (returned in *i). 'allow_capture' / 'allow_active' select which options
 * are accepted.
 */
static void parse_options(int argc, char **argv, int *i, struct options *o,
    int allow_capture, int allow_active)
{
#define NEED(n) do { if (*i + (n) >= argc) usage_error("option %s needs an argument", a); } while (0)
	while (*i < argc && strncmp(argv[*i], "--", 2) == 0) {
		const char *a = argv[*i];

		if (strcmp(a, "--user") == 0) {
			NEED(1); o->user = argv[++*i];
		} else if (strcmp(a, "--password") == 0) {
			NEED(1); o->password = argv[++*i];
		} else if (allow_capture && strcmp(a, "--snaplen") == 0) {
			NEED(1); o->snaplen = (int)parse_long(a, argv[++*i], 1);
		} else if (allow_capture && strcmp(a, "--timeout-ms") == 0) {
			NEED(1); o->timeout_ms = (int)parse_long(a, argv[++*i], 0);
		} else if (allow_capture && strcmp(a, "--no-promisc") == 0) {
			o->promisc = 0;
		} else if (allow_capture && strcmp(a, "--udp") == 0) {
			o->udp = 1;
		} else if (allow_capture && strcmp(a, "--nocapture-rpcap") == 0) {
			o->nocapture_rpcap = 1;
		} else if (allow_capture && strcmp(a, "--filter") == 0) {
			NEED(1); o->filter = argv[++*i];
		} else if (allow_capture && strcmp(a, "--count") == 0) {
			NEED(1); o->count = parse_long(a, argv[++*i], 0);
		} else if (allow_capture && strcmp(a, "--max-seconds") == 0) {
			NEED(1); o->max_seconds = parse_double(a, argv[++*i]);
		} else if (allow_capture && strcmp(a, "--update-filter-after") == 0) {
			NEED(2);
			o->update_filter_after = parse_long(a, argv[++*i], 0);
			o->update_filter = argv[++*i];
		} else if (allow_capture && strcmp(a, "--stop-reading-after") == 0) {
			NEED(1); o->stop_reading_after = parse_long(a, argv[++*i], 0);
		} else if (allow_capture && strcmp(a, "--stats") == 0) {
			o->stats = 1;
		} else if (allow_capture && strcmp(a, "--sampling") == 0) {
			NEED(2);
			o->sampling_method = (int)parse_long(a, argv[++*i], 0);
			o->sampling_value = (int)parse_long(a, argv[++*i], 0);
		} else if (allow_capture && strcmp(a, "--quiet") == 0) {
			o->quiet = 1;
		} else if (allow_active && strcmp(a, "--listen-host") == 0) {
			NEED(1); o->listen_host = argv[++*i];
		} else if (allow_active && strcmp(a, "--listen-port") == 0) {
			NEED(1); o->listen_port = argv[++*i];
		} else if (allow_active && strcmp(a, "--timeout-s") == 0) {
			NEED(1); o->timeout_s = (int)parse_long(a, argv[++*i], 1);
		} else if (allow_active && strcmp(a, "--tls") == 0) {
			o->tls = 1;
		} else {
			usage_error("unknown option: %s", a);
		}
		++*i;
	}
#undef NEED
}

/* Returns the auth struct to pass to libpcap, or NULL for null auth. */
static struct pcap_rmtauth *make_auth(const struct options *o,
    struct pcap_rmtauth *auth)
{
	if (o->user == NULL && o->password == NULL)
		return NULL;
	memset(auth, 0, sizeof(*auth));
	auth->type = RPCAP_RMTAUTH_PWD;
	/* libpcap's struct has non-const members; it never writes to them. */
	auth->username = (char *)(o->user ? o->user : "");
	auth->password = (char *)(o->password ? o->password : "");
	return auth;
}

/* --------------------------------------------------------- findalldevs -- */

static void print_sockaddr(const char *key, const struct sockaddr *sa)
{
	char buf[INET6_ADDRSTRLEN];
	const void *src = NULL;

	printf(",\"%s\":", key);
	if (sa != NULL && sa->sa_family == AF_INET)
		src = &((const struct sockaddr_in *)sa)->sin_addr;
	else if (sa != NULL && sa->sa_family == AF_INET6)
		src = &((const struct sockaddr_in6 *)sa)->sin6_addr;
	if (src != NULL && inet_ntop(sa->sa_family, src, buf, sizeof(buf)))
		json_string(stdout, buf);
	else
		fputs("null", stdout);
}

static void do_findalldevs(const char *url, struct pcap_rmtauth *auth)
{
	char errbuf[PCAP_ERRBUF_SIZE] = "";
	pcap_if_t *devs = NULL, *d;
	pcap_addr_t *a;
	int first_dev = 1;

	if (pcap_findalldevs_ex(url, auth, &devs, errbuf) == -1)
		fail("pcap_findalldevs_ex(%s): %s", url, errbuf);

	fputs("{\"interfaces\":[", stdout);
	for (d = devs; d != NULL; d = d->next) {
		int first_addr = 1;

		fputs(first_dev ? "{" : ",{", stdout);
		first_dev = 0;
		fputs("\"name\":", stdout);
		json_string(stdout, d->name);
		fputs(",\"description\":", stdout);
		json_string(stdout, d->description);
		printf(",\"flags\":%u,\"addresses\":[", (unsigned)d->flags);
		for (a = d->addresses; a != NULL; a = a->next) {
			if (a->addr == NULL || (a->addr->sa_family != AF_INET &&
			    a->addr->sa_family != AF_INET6))
				continue;
			fputs(first_addr ? "{" : ",{", stdout);
			first_addr = 0;
			printf("\"family\":\"%s\"",
			    a->addr->sa_family == AF_INET ? "ipv4" : "ipv6");
			print_sockaddr("addr", a->addr);
			print_sockaddr("netmask", a->netmask);
			print_sockaddr("broadaddr", a->broadaddr);
			fputs("}", stdout);
		}
		fputs("]}", stdout);
	}
	fputs("]", stdout);
	end_line();
	pcap_freealldevs(devs);
}

/* ------------------------------------------------------------- capture -- */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set_filter(pcap_t *p, const char *expr)
{
	struct bpf_program prog;

	if (pcap_compile(p, &prog, expr, 1, PCAP_NETMASK_UNKNOWN) == -1)
		fail("pcap_compile(%s): %s", expr, pcap_geterr(p));
	if (pcap_setfilter(p, &prog) == -1) {
		char msg[PCAP_ERRBUF_SIZE + 1];

		snprintf(msg, sizeof(msg), "%s", pcap_geterr(p));
		pcap_freecode(&prog);
		fail("pcap_setfilter(%s): %s", expr, msg);
	}
	pcap_freecode(&prog);
}

static void print_packet(const struct pcap_pkthdr *h, const u_char *data)
{
	static const char hex[] = "0123456789abcdef";
	bpf_u_int32 i;

	printf("{\"caplen\":%u,\"len\":%u,\"ts\":\"%ld.%06ld\",\"data\":\"",
	    (unsigned)h->caplen, (unsigned)h->len,
	    (long)h->ts.tv_sec, (long)h->ts.tv_usec);
	for (i = 0; i < h->caplen; i++) {
		putchar(hex[data[i] >> 4]);
		putchar(hex[data[i] & 0x0f]);
	}
	putchar('"');
	end_line();
}

static void sleep_seconds(double s)
{
	struct timespec ts;

	if (s <= 0)
		return;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static void print_stats(pcap_t *p)
{
	struct pcap_stat st;

	/*
	 * pcap_stats_ex() exists only on Windows; elsewhere libpcap drops the
	 * server-captured count (svrcapt) of the RPCAP stats reply, so
	 * ps_capt is null.
	 */
	memset(&st, 0, sizeof(st));
	if (pcap_stats(p, &st) == -1)
		fail("pcap_stats: %s", pcap_geterr(p));
	printf("{\"stats\":{\"ps_recv\":%u,\"ps_drop\":%u,\"ps_ifdrop\":%u,"
	    "\"ps_capt\":null}", st.ps_recv, st.ps_drop, st.ps_ifdrop);
	end_line();
}

static void do_capture(const char *source, const struct options *o,
    struct pcap_rmtauth *auth)
{
	char errbuf[PCAP_ERRBUF_SIZE] = "";
	int flags = 0;
	long npkts = 0;
	double start;
	pcap_t *p;

	if (o->promisc)
		flags |= PCAP_OPENFLAG_PROMISCUOUS;
	if (o->udp)
		flags |= PCAP_OPENFLAG_DATATX_UDP;
	if (o->nocapture_rpcap)
		flags |= PCAP_OPENFLAG_NOCAPTURE_RPCAP;

	p = pcap_open(source, o->snaplen, flags, o->timeout_ms, auth, errbuf);
	if (p == NULL)
		fail("pcap_open(%s): %s", source, errbuf);
	printf("{\"linktype\":%d", pcap_datalink(p));
	end_line();

	/*
	 * libpcap sends the sampling request when the capture starts (the
	 * first read or pcap_setfilter), so it is set here, before either.
	 */
	if (o->sampling_method != 0) {
		struct pcap_samp *samp = pcap_setsampling(p);

		if (samp == NULL)
			fail("pcap_setsampling(%s): not a remote capture", source);
		samp->method = o->sampling_method;
		samp->value = o->sampling_value;
	}

	/* No --filter: never call pcap_setfilter (the client's no-filter path). */
	if (o->filter != NULL)
		set_filter(p, o->filter);

	start = now_s();
	for (;;) {
		struct pcap_pkthdr *h;
		const u_char *data;
		int r;

		if (o->count > 0 && npkts >= o->count)
			break;
		if (o->max_seconds > 0 && now_s() - start >= o->max_seconds)
			break;

		r = pcap_next_ex(p, &h, &data);
		if (r == 0)
			continue;	/* read timeout: look at the clock again */
		if (r == PCAP_ERROR_BREAK)
			break;
		if (r < 0)
			fail("pcap_next_ex(%s): %s", source, pcap_geterr(p));

		if (!o->quiet)
			print_packet(h, data);
		npkts++;
		if (o->update_filter != NULL && npkts == o->update_filter_after) {
			set_filter(p, o->update_filter);
			fputs("{\"filter_updated\":true", stdout);
			end_line();
		}
		if (o->stop_reading_after > 0 && npkts == o->stop_reading_after) {
			/* Play a client that stops reading: leave the data pile up. */
			sleep_seconds(o->max_seconds);
			break;
		}
	}

	if (o->stats)
		print_stats(p);
	pcap_close(p);
	printf("{\"done\":true,\"packets\":%ld", npkts);
	end_line();
}

/* -------------------------------------------------------------- active -- */

static void on_alarm(int sig)
{
	static const char msg[] =
	    "{\"error\":\"timed out (--timeout-s) in active mode\"}\n";

	(void)sig;
	/* Only async-signal-safe calls here. */
	if (write(STDOUT_FILENO, msg, sizeof(msg) - 1) < 0) {
		/* nothing more we can do */
	}
	_exit(2);
}

static void do_active(int argc, char **argv, int i, struct options *o)
{
	char errbuf[PCAP_ERRBUF_SIZE] = "";
	char host[RPCAP_HOSTLIST_SIZE + 1] = "";
	char url[RPCAP_HOSTLIST_SIZE + 64];
	struct pcap_rmtauth authbuf, *auth;
	const char *sub;
	const char *iface = NULL;
	PCAP_SOCKET s;
	struct sigaction sa;

	if (i >= argc)
		usage_error("active: missing subcommand (findalldevs|capture)");
	sub = argv[i++];
	if (strcmp(sub, "capture") == 0) {
		if (i >= argc)
			usage_error("active capture: missing interface name");
		iface = argv[i++];
		parse_options(argc, argv, &i, o, 1, 0);
	} else if (strcmp(sub, "findalldevs") == 0) {
		parse_options(argc, argv, &i, o, 0, 0);
	} else {
		usage_error("active: unknown subcommand '%s'", sub);
	}
	if (i != argc)
		usage_error("unexpected argument: %s", argv[i]);
	if (o->listen_port == NULL)
		usage_error("active: --listen-port is required");
	auth = make_auth(o, &authbuf);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	alarm((unsigned)o->timeout_s);

#if HAVE_REMOTEACT_ACCEPT_EX
	s = pcap_remoteact_accept_ex(o->listen_host, o->listen_port, NULL, host,
	    auth, o->tls, errbuf);
#else
	if (o->tls)
		fail("--tls needs pcap_remoteact_accept_ex (libpcap >= 1.10)");
	s = pcap_remoteact_accept(o->listen_host, o->listen_port, NULL, host,
	    auth, errbuf);
#endif
	if ((long)s < 0)	/* -1, -2 or -3 on UN*X */
		fail("pcap_remoteact_accept(%s:%s): %s",
		    o->listen_host ? o->listen_host : "*", o->listen_port, errbuf);
	fputs("{\"accepted\":", stdout);
	json_string(stdout, host);
	end_line();

	/* The session itself gets the same budget, plus the capture time. */
	alarm((unsigned)o->timeout_s + (unsigned)o->max_seconds + 1);

	/*
	 * libpcap finds the active connection by the host part of the source
	 * string (compared by address; the port is ignored), so the source is
	 * rpcap://<connecting host>:<port>/ -- an IPv6 host needs brackets.
	 */
	snprintf(url, sizeof(url), "%s%s%s%s:%s/",
	    o->tls ? "rpcaps://" : "rpcap://",
	    strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "",
	    o->listen_port);

	if (iface == NULL) {
		do_findalldevs(url, auth);
	} else {
		char source[sizeof(url) + 256];

		snprintf(source, sizeof(source), "%s%s", url, iface);
		do_capture(source, o, auth);
	}

	if (pcap_remoteact_close(host, errbuf) == -1)
		fail("pcap_remoteact_close(%s): %s", host, errbuf);
	pcap_remoteact_cleanup();
	alarm(0);
}

/* ---------------------------------------------------------------- main -- */

int main(int argc, char **argv)
{
	struct options o;
	struct pcap_rmtauth authbuf;
	const char *cmd;
	int i = 2;

	memset(&o, 0, sizeof(o));
	o.snaplen = 65535;
	o.timeout_ms = 1000;
	o.promisc = 1;
	o.timeout_s = 30;

	if (argc < 2)
		usage_error("missing command");
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	/* A client that stops reading must not be killed by a closed pipe. */
	signal(SIGPIPE, SIG_IGN);

	cmd = argv[1];
	if (strcmp(cmd, "findalldevs") == 0 || strcmp(cmd, "capture") == 0) {
		const char *target;
		int is_capture = strcmp(cmd, "capture") == 0;

		if (argc < 3)
			usage_error("%s: missing URL", cmd);
		target = argv[i++];
		parse_options(argc, argv, &i, &o, is_capture, 0);
		if (i != argc)
			usage_error("unexpected argument: %s", argv[i]);
		if (is_capture)
			do_capture(target, &o, make_auth(&o, &authbuf));
		else
			do_findalldevs(target, make_auth(&o, &authbuf));
	} else if (strcmp(cmd, "active") == 0) {
		parse_options(argc, argv, &i, &o, 0, 1);
		do_active(argc, argv, i, &o);
	} else {
		usage_error("unknown command: %s", cmd);
	}
	return 0;
}
