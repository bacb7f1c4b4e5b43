import { describe, expect, it } from 'vitest';

import { AtomscaleClient, Requester } from '../src/client';
import { IOrgConfig, withOrgDefaults } from '../src/orgconfig';
import type { IPanelSettings } from '../src/panel';

// the panel's defaults (importing the panel itself needs a DOM)
const DEFAULT_SETTINGS: IPanelSettings = {
  pageSize: 50,
  defaultSort: 'start',
  sortOrder: 'desc',
  plottedChannel: 'rheed_specular_intensity',
  maxPoints: 200,
  searchDelay: 300,
};

const ORG: IOrgConfig = {
  instrument_names: { 'mbe-1': 'MBE 1' },
  default_project: null,
  units: { temperature: 'degC', pressure: 'Torr', thickness: 'nm' },
  sidebar_page_size: 25,
};

describe('org configuration', () => {
  it('sets the page size the user did not choose', () => {
    expect(withOrgDefaults(DEFAULT_SETTINGS, {}, ORG).pageSize).toBe(25);
  });

  it('leaves a page size the user chose', () => {
    const composite = { ...DEFAULT_SETTINGS, pageSize: 100 };
    expect(withOrgDefaults(composite, { pageSize: 100 }, ORG).pageSize).toBe(100);
  });

  it('keeps the settings without an org configuration', () => {
    expect(withOrgDefaults(DEFAULT_SETTINGS, {}, null)).toEqual(DEFAULT_SETTINGS);
  });

  it('is read from the config route', async () => {
    const calls: string[] = [];
    const request: Requester = async (url) => {
      calls.push(url);
      return new Response(JSON.stringify({ config: ORG, updated: null }), { status: 200 });
    };
    const doc = await new AtomscaleClient('http://h/user/ann/', request).config();
    expect(calls).toEqual(['http://h/user/ann/atomscale/api/v1/config']);
    expect(doc.config.sidebar_page_size).toBe(25);
  });
});
