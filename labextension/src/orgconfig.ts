/**
 * The org's workspace configuration (set up by support or an org admin through the REST API's
 * `config` route) and how it fills in the sidebar's settings.
 */

import type { IPanelSettings } from './panel';

/** The org's settings as `GET config` answers them. */
export interface IOrgConfig {
  instrument_names: Record<string, string>;
  default_project: string | null;
  units: Record<string, string>;
  sidebar_page_size: number;
}

/** `GET config`: the configuration and when it last changed. */
export interface IOrgConfigDoc {
  config: IOrgConfig;
  updated: string | null;
}

/**
 * The panel settings with the org's defaults applied: a setting the user chose in their own
 * settings wins; otherwise the org's configuration decides (page size of the run list).
 */
export function withOrgDefaults(
  composite: IPanelSettings,
  user: Partial<IPanelSettings>,
  org: IOrgConfig | null,
): IPanelSettings {
  const out = { ...composite };
  if (org && user.pageSize === undefined && Number.isInteger(org.sidebar_page_size)) {
    out.pageSize = org.sidebar_page_size;
  }
  return out;
}
