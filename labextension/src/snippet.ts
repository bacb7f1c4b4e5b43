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

/** Python that loads one run's process data with the kernel-side client. */
export function runSnippet(runId: string): string {
  return [
    'from atomscale_lab import Workspace',
    '',
    'ws = Workspace()',
    `df = ws.process(${pyString(runId)})`,
    'df.head()'
  ].join('\n');
}
