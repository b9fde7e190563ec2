/*
 * Drive Pacemaker's executor (pacemaker-execd; here pacemaker-remoted, the same executor standalone)
 * through its own client library, liblrmd, over one connection kept open for the whole run.
 *
 *   execd_monitor oneshot N STATE_FILE     register ocf:heartbeat:Dummy as "d", start it, then N monitors
 *                                          one after another, each waited for; print each monitor's wall
 *                                          time (exec() to its completion event) in microseconds, a line each
 *   execd_monitor recurring N STATE_FILE INTERVAL_MS
 *                                          start it, then one recurring monitor every INTERVAL_MS; print the
 *                                          wall time from its first completion to its (N+1)th (execd reports
 *                                          every run) in microseconds: N cycles
 *
 * Exits 0 on success; 1 with a message on stderr when the executor refuses or an operation fails.
 * Built by bench/lrm.py with the flags of pkg-config's pacemaker-lrmd (Debian: pacemaker-dev).
 */
#include <crm/lrmd.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static GMainLoop *loop;
static lrmd_t *conn;
static const char *state_file;
static int wanted, seen, failed, started, recurring, finished;
static guint interval_ms;
static double t_sent, t_first;

static double now_us(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int submit(const char *action, guint every)
{
    lrmd_key_value_t *params = lrmd_key_value_add(NULL, "state", state_file); /* freed by exec() */
    int rc;

    t_sent = now_us();
    rc = conn->cmds->exec(conn, "d", action, NULL, every, 20000, 0, 0, params);
    if (rc < 0) {
        fprintf(stderr, "exec %s refused: %d\n", action, rc);
        failed = 1;
        g_main_loop_quit(loop);
    }
    return rc;
}

static void on_event(lrmd_event_data_t *e)
{
    if (e->type != lrmd_event_exec_complete) {
        if (e->type == lrmd_event_disconnect && !finished) {
            fprintf(stderr, "the executor went away\n");
            failed = 1;
            g_main_loop_quit(loop);
        }
        return;
    }
    if (e->rc != PCMK_OCF_OK || e->op_status != PCMK_EXEC_DONE) {
        fprintf(stderr, "%s: rc %d, status %d\n", e->op_type, e->rc, e->op_status);
        failed = 1;
        g_main_loop_quit(loop);
        return;
    }
    if (!started) {
        started = 1;
        submit("monitor", recurring ? interval_ms : 0);
        return;
    }
    if (recurring) {  /* from the first run's completion to the (N+1)th's: N whole cycles, as the LRM's side */
        if (seen++ == 0) {
            t_first = now_us();
        } else if (seen == wanted + 1) {
            printf("%.1f\n", now_us() - t_first);
            g_main_loop_quit(loop);
        }
        return;
    }
    printf("%.1f\n", now_us() - t_sent);
    if (++seen < wanted) {
        submit("monitor", 0);
    } else {
        g_main_loop_quit(loop);
    }
}

int main(int argc, char **argv)
{
    int rc;

    if (argc < 4 || (strcmp(argv[1], "oneshot") && strcmp(argv[1], "recurring"))
        || (!strcmp(argv[1], "recurring") && argc < 5)) {
        fprintf(stderr, "usage: %s oneshot N STATE_FILE | recurring N STATE_FILE INTERVAL_MS\n", argv[0]);
        return 2;
    }
    recurring = !strcmp(argv[1], "recurring");
    wanted = atoi(argv[2]);
    state_file = argv[3];
    interval_ms = recurring ? (guint) atoi(argv[4]) : 0;

    loop = g_main_loop_new(NULL, FALSE);
    conn = lrmd_api_new();
    if (conn == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    rc = conn->cmds->connect(conn, "tenure-bench", NULL);
    if (rc != pcmk_ok) {
        fprintf(stderr, "cannot connect to the executor: %d\n", rc);
        return 1;
    }
    conn->cmds->set_callback(conn, on_event);
    rc = conn->cmds->register_rsc(conn, "d", "ocf", "heartbeat", "Dummy", 0);
    if (rc != pcmk_ok) {
        fprintf(stderr, "register_rsc refused: %d\n", rc);
        return 1;
    }
    if (submit("start", 0) >= 0) {
        g_main_loop_run(loop);
    }
    finished = 1;
    if (recurring) {
        conn->cmds->cancel(conn, "d", "monitor", interval_ms);
    }
    conn->cmds->unregister_rsc(conn, "d", 0);
    conn->cmds->disconnect(conn);
    lrmd_api_delete(conn);
    return failed;
}
