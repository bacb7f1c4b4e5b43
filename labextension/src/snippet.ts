/**
 * The code cell "Open in notebook" inserts for a run.
 */

/**
 * A Python string literal for `text`. JSON's escapes (`\"`, `\\`, `\n`, `\uXXXX`) are all valid in
 * Python, so a run id with quotes or newlines cannot break out of the literal.
 */
export function pyString(text: string): string {
  return JSON.stringify(text);
}

/**
 * Python that plots one run (process channels and tool state on one time axis) and its RHEED
 * analysis (growth windows, period, rate; an interactive plot of the trace) with the kernel-side
 * client.
 */
export function runSnippet(runId: string): string {
  return [
    'from atomscale_lab import Workspace',
    'from atomscale_lab.client.widgets import plot_rheed, plot_run',
    '',
    'ws = Workspace()',
    `run_id = ${pyString(runId)}`,
    'display(plot_run(ws, run_id))',
    'display(ws.rheed(run_id)[["run_id", "window", "shutters", "period_s", "period_err_s",',
    '                         "rate_ml_s", "layers_observed", "drift", "status"]])',
    'plot_rheed(ws, run_id)',
  ].join('\n');
}
