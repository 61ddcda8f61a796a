/*
 * The pod sandbox process of the test node's kubelet (its `sandbox_image`), standing in for
 * registry.k8s.io/pause, which this machine cannot pull. It holds the pod's namespaces by
 * existing: it blocks in pause(), reaps the children it inherits as PID 1 of a shared PID
 * namespace, and exits 0 when the runtime stops the sandbox with SIGTERM or SIGINT.
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal_number) {
  (void)signal_number;
  _exit(0);
}

static void reap(int signal_number) {
  (void)signal_number;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction on_stop = {.sa_handler = stop};
  struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGTERM, &on_stop, NULL) != 0 || sigaction(SIGINT, &on_stop, NULL) != 0 ||
      sigaction(SIGCHLD, &on_child, NULL) != 0) {
    return 1;
  }
  for (;;) {
    pause();
  }
}
