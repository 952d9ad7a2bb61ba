"""Exit codes, one meaning each: 0 ok; 1 the answer is "no" (search: budget not met, outputs
still written; evaluate: the plan failed; build: the artifact does not run the plan); 2 user
error (clear message, no traceback); 3 internal error (a bug: one line, the traceback saved to
a file, -v prints it); 130 interrupted (evaluations so far are saved; --resume continues)."""

EXIT_OK, EXIT_BUDGET, EXIT_USER, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

__all__ = ["EXIT_BUDGET", "EXIT_BUG", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USER"]
