/**
 * The sidebar panel: the org at a glance, a searchable page of runs, and the selected run.
 *
 * Plain DOM inside a Lumino widget; all data comes from `AtomscaleClient`, one page at a time.
 */

import { Widget } from '@lumino/widgets';

import { ApiError, AtomscaleClient, IRun, IRunDetail, IStatus, SIDEBAR_PURPOSE } from './client';
import { formatCount, formatTime, formatValue } from './format';
import { debounce, LatestOnly, PagingState, SORT_KEYS } from './paging';
import { RheedPlot, rheedSummary } from './rheedplot';
import { extent, frameToSeries, sparklinePath } from './sparkline';

/** The facets offered as filters (all from GET `facets`, which needs only data:read). */
export const FACETS = ['project', 'instrument', 'method', 'status'] as const;
/** The context facet, offered only to users whose permissions include `context:join`. */
export const MATERIAL_FACET = 'material_system';
const RHEED_CHANNEL = 'rheed_specular_intensity';

/** User settings the panel reads (from the settings registry). */
export interface IPanelSettings {
  pageSize: number;
  defaultSort: string;
  sortOrder: 'asc' | 'desc';
  plottedChannel: string;
  maxPoints: number;
  searchDelay: number;
}

/** Defaults, matching `schema/plugin.json`. */
export const DEFAULT_SETTINGS: IPanelSettings = {
  pageSize: 50,
  defaultSort: 'start',
  sortOrder: 'desc',
  plottedChannel: 'rheed_specular_intensity',
  maxPoints: 200,
  searchDelay: 300,
};

const SPARK_W = 240;
const SPARK_H = 48;

/** Make an element with a class and optional text. */
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** A readable message for anything a call may throw. */
function describe(err: unknown): string {
  if (err instanceof ApiError) {
    return err.message;
  }
  if (err instanceof Error) {
    return err.message;
  }
  return String(err);
}

const isAbort = (err: unknown) => (err as Error)?.name === 'AbortError';

type ErrorSource = 'status' | 'list' | 'notebook';

/** The data browser shown in JupyterLab's left sidebar. */
export class DataBrowserPanel extends Widget {
  /** Called with a run id when "Open in notebook" is pressed. */
  onOpenInNotebook: ((runId: string) => Promise<void>) | null = null;

  private _client: AtomscaleClient;
  private _settings: IPanelSettings = { ...DEFAULT_SETTINGS };
  private _paging = new PagingState();
  private _listReq = new LatestOnly();
  private _detailReq = new LatestOnly();
  private _selected: string | null = null;
  private _loaded = false;
  private _errors = new Map<ErrorSource, string>();
  private _search: ReturnType<typeof debounce<[string]>>;

  private _orgNode = el('dl', 'jp-AtomscalePanel-org');
  private _categoriesNode = el('ul', 'jp-AtomscalePanel-categories');
  private _errorNode = el('div', 'jp-AtomscalePanel-error');
  private _searchInput = el('input', 'jp-AtomscalePanel-search jp-mod-styled');
  private _sortSelect = el('select', 'jp-AtomscalePanel-sort jp-mod-styled');
  private _orderButton = el('button', 'jp-AtomscalePanel-order jp-Button jp-mod-minimal');
  private _listNode = el('ul', 'jp-AtomscalePanel-runs');
  private _rangeNode = el('span', 'jp-AtomscalePanel-range');
  private _prevButton = el('button', 'jp-AtomscalePanel-prev jp-Button jp-mod-minimal', '‹ Prev');
  private _nextButton = el('button', 'jp-AtomscalePanel-next jp-Button jp-mod-minimal', 'Next ›');
  private _detailNode = el('section', 'jp-AtomscalePanel-detail');
  private _facetsNode = el('div', 'jp-AtomscalePanel-facets');
  private _facetSelects = new Map<string, HTMLSelectElement>();
  private _materialSelect = el('select', 'jp-AtomscalePanel-facet jp-mod-styled');
  /** The user's permissions, from the last `status` answer. */
  private _permissions = new Set<string>();
  /** The RHEED plot of the selected run, when it has a trace. */
  rheedPlot: RheedPlot | null = null;

  constructor(client: AtomscaleClient) {
    super();
    this._client = client;
    this.id = 'atomscale-lab-browser';
    this.addClass('jp-AtomscalePanel');
    this.title.caption = 'Atomscale data';
    this._search = debounce((q: string) => {
      if (this._paging.setQuery(q)) {
        void this.loadRuns();
      }
    }, this._settings.searchDelay);
    this._build();
  }

  /** The current settings. */
  get settings(): IPanelSettings {
    return { ...this._settings };
  }

  /** Apply new settings; reloads the list when page size or sort changed. */
  applySettings(settings: Partial<IPanelSettings>): void {
    const before = this._settings;
    this._settings = { ...before, ...settings };
    const s = this._settings;
    if (s.searchDelay !== before.searchDelay) {
      this._search.cancel();
      this._search = debounce((q: string) => {
        if (this._paging.setQuery(q)) {
          void this.loadRuns();
        }
      }, s.searchDelay);
    }
    const listChanged =
      s.pageSize !== this._paging.perPage ||
      s.defaultSort !== before.defaultSort ||
      s.sortOrder !== before.sortOrder;
    this._paging.perPage = s.pageSize;
    if (s.defaultSort !== before.defaultSort || s.sortOrder !== before.sortOrder) {
      this._paging.setSort(s.defaultSort, s.sortOrder);
      this._syncSortControls();
    }
    if (listChanged && this._loaded) {
      this._paging.page = 1;
      void this.loadRuns();
    }
    if (s.plottedChannel !== before.plottedChannel || s.maxPoints !== before.maxPoints) {
      if (this._selected && this._loaded) {
        void this.select(this._selected);
      }
    }
  }

  /** Load the org status and the first page of runs. */
  async refresh(): Promise<void> {
    this._clearError();
    this._facetsNode.dataset.state = 'loading';
    // the facets wait for status: its permissions decide whether context facets are offered
    await Promise.all([this.loadStatus().then(() => this.loadFacets()), this.loadRuns()]);
  }

  /** Fill the facet pickers from GET `facets` (keeping what is chosen). */
  async loadFacets(): Promise<void> {
    try {
      const facets = await this._client.facets();
      for (const name of FACETS) {
        const select = this._facetSelects.get(name);
        if (!select) {
          continue;
        }
        const chosen = this._paging.filters[name] ?? '';
        select.replaceChildren();
        const all = el('option', '', `all ${name === 'status' ? 'statuses' : name + 's'}`);
        all.value = '';
        select.appendChild(all);
        for (const v of facets[name] ?? []) {
          const opt = el('option', '', v);
          opt.value = v;
          select.appendChild(opt);
        }
        select.value = chosen;
      }
      await this._loadMaterialFacet();
      this._facetsNode.dataset.state = 'ready';
    } catch (err) {
      this._facetsNode.dataset.state = 'error';
      this._showError('list', describe(err));
    }
  }

  /**
   * Offer the material-system facet (runs per label, one audited context join) only when the
   * user may join context; otherwise take it out, and drop a filter it had set.
   */
  private async _loadMaterialFacet(): Promise<void> {
    const select = this._materialSelect;
    if (!this._permissions.has('context:join')) {
      select.remove();
      if (this._paging.setFilter(MATERIAL_FACET, '')) {
        void this.loadRuns();
      }
      return;
    }
    const doc = await this._client.contextFacets(MATERIAL_FACET, SIDEBAR_PURPOSE);
    const chosen = this._paging.filters[MATERIAL_FACET] ?? '';
    const all = el('option', '', 'all material systems');
    all.value = '';
    select.replaceChildren(all);
    for (const v of doc.values) {
      const opt = el('option', '', `${v.value} (${formatCount(v.runs)})`);
      opt.value = v.value;
      select.appendChild(opt);
    }
    select.value = chosen;
    if (!select.isConnected) {
      this._facetsNode.appendChild(select);
    }
  }

  /** Fetch and show the org header and category counts. */
  async loadStatus(): Promise<void> {
    try {
      const status = await this._client.status();
      this._permissions = new Set(status.permissions ?? []);
      this._renderStatus(status);
      this._clearError('status');
    } catch (err) {
      this._permissions = new Set(); // unknown permissions: offer no context facet
      this._orgNode.replaceChildren();
      this._categoriesNode.replaceChildren();
      if (err instanceof ApiError && err.status === 404 && !err.fromServer) {
        // Jupyter's own 404 page, not the API's: the server extension is not there at all.
        this._showError(
          'status',
          'This Jupyter server does not run the atomscale_lab server extension (HTTP 404); ' +
            'start it with `atomscale-lab lab ORG` or enable the extension.',
        );
      } else {
        this._showError('status', describe(err));
      }
    }
  }

  /** Fetch and show the current page of runs (one request, whatever the org's size). */
  async loadRuns(): Promise<void> {
    const ticket = this._listReq.start();
    this._listNode.setAttribute('aria-busy', 'true');
    this.node.dataset.listState = 'loading';
    try {
      const page = await this._client.runs(this._paging.query(), ticket.signal);
      if (!this._listReq.isCurrent(ticket)) {
        return;
      }
      this._paging.setTotal(page.total);
      this._renderRuns(page.runs);
      this._clearError('list');
      this.node.dataset.listState = 'ready';
      this.node.dataset.loads = String(Number(this.node.dataset.loads ?? 0) + 1);
    } catch (err) {
      if (isAbort(err) || !this._listReq.isCurrent(ticket)) {
        return;
      }
      this._renderRuns([]);
      this._showError('list', describe(err));
      this.node.dataset.listState = 'error';
    } finally {
      if (this._listReq.isCurrent(ticket)) {
        this._listNode.removeAttribute('aria-busy');
      }
    }
  }

  /** Show one run: its record, channels, metrology items and a sparkline. */
  async select(runId: string): Promise<void> {
    this._selected = runId;
    for (const li of Array.from(this._listNode.children) as HTMLElement[]) {
      const on = li.dataset.runId === runId;
      li.classList.toggle('jp-mod-selected', on);
      li.setAttribute('aria-selected', on ? 'true' : 'false');
    }
    const ticket = this._detailReq.start();
    this._detailNode.replaceChildren(el('div', 'jp-AtomscalePanel-loading', `Loading ${runId}…`));
    this._detailNode.dataset.runId = runId;
    this._detailNode.dataset.state = 'loading';
    try {
      const detail = await this._client.run(runId, ticket.signal);
      if (!this._detailReq.isCurrent(ticket)) {
        return;
      }
      this._renderDetail(detail);
      this._detailNode.dataset.state = 'ready';
      await Promise.all([this._loadPlot(detail, ticket), this._loadRheed(detail, ticket)]);
    } catch (err) {
      if (isAbort(err) || !this._detailReq.isCurrent(ticket)) {
        return;
      }
      this._detailNode.replaceChildren(
        el('div', 'jp-AtomscalePanel-error jp-mod-inline', describe(err)),
      );
      this._detailNode.dataset.state = 'error';
    }
  }

  protected onAfterShow(): void {
    // Load on first show rather than at start-up: a closed sidebar costs the server nothing.
    if (!this._loaded) {
      this._loaded = true;
      void this.refresh();
    }
  }

  protected onBeforeDetach(): void {
    this._search.cancel();
    this._listReq.cancel();
    this._detailReq.cancel();
  }

  private _build(): void {
    const header = el('header', 'jp-AtomscalePanel-header');
    const titleRow = el('div', 'jp-AtomscalePanel-titleRow');
    titleRow.appendChild(el('h2', 'jp-AtomscalePanel-title', 'Atomscale data'));
    const refresh = el('button', 'jp-AtomscalePanel-refresh jp-Button jp-mod-minimal', '↻');
    refresh.title = 'Refresh';
    refresh.setAttribute('aria-label', 'Refresh');
    refresh.addEventListener('click', () => void this.refresh());
    titleRow.appendChild(refresh);
    header.append(titleRow, this._orgNode);

    this._errorNode.setAttribute('role', 'alert');
    this._errorNode.hidden = true;

    const cats = el('section', 'jp-AtomscalePanel-section');
    cats.append(el('h3', 'jp-AtomscalePanel-heading', 'Categories'), this._categoriesNode);

    const runs = el('section', 'jp-AtomscalePanel-section jp-AtomscalePanel-runsSection');
    const tools = el('div', 'jp-AtomscalePanel-tools');
    this._searchInput.type = 'search';
    this._searchInput.placeholder = 'Search runs';
    this._searchInput.title = 'Matches run id, project, sample, instrument, method and operator';
    this._searchInput.setAttribute('aria-label', 'Search runs');
    this._searchInput.addEventListener('input', () => this._search(this._searchInput.value));
    this._searchInput.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') {
        this._search.flush();
      }
    });
    for (const key of SORT_KEYS) {
      const opt = el('option', '', key.replace('_', ' '));
      opt.value = key;
      this._sortSelect.appendChild(opt);
    }
    this._sortSelect.setAttribute('aria-label', 'Sort runs by');
    this._sortSelect.addEventListener('change', () => {
      this._paging.setSort(this._sortSelect.value);
      void this.loadRuns();
    });
    this._orderButton.addEventListener('click', () => {
      this._paging.setSort(this._paging.sort, this._paging.order === 'desc' ? 'asc' : 'desc');
      this._syncSortControls();
      void this.loadRuns();
    });
    this._syncSortControls();
    tools.append(
      this._searchInput,
      el('span', 'jp-AtomscalePanel-sortLabel', 'Sort'),
      this._sortSelect,
      this._orderButton,
    );
    for (const name of FACETS) {
      const select = el('select', 'jp-AtomscalePanel-facet jp-mod-styled');
      select.dataset.facet = name;
      select.setAttribute('aria-label', `Filter by ${name}`);
      select.title = `Only runs of this ${name}`;
      select.addEventListener('change', () => {
        if (this._paging.setFilter(name, select.value)) {
          void this.loadRuns();
        }
      });
      this._facetSelects.set(name, select);
      this._facetsNode.appendChild(select);
    }
    const material = this._materialSelect;
    material.dataset.facet = MATERIAL_FACET;
    material.setAttribute('aria-label', 'Filter by material system');
    material.title = 'Only runs of this material system (joins context labels; audited)';
    material.addEventListener('change', () => {
      if (this._paging.setFilter(MATERIAL_FACET, material.value)) {
        void this.loadRuns();
      }
    });

    this._listNode.setAttribute('role', 'listbox');
    this._listNode.setAttribute('aria-label', 'Runs');
    this._listNode.addEventListener('click', (ev) => {
      const li = (ev.target as HTMLElement).closest('li[data-run-id]') as HTMLElement | null;
      if (li?.dataset.runId) {
        void this.select(li.dataset.runId);
      }
    });

    const pager = el('div', 'jp-AtomscalePanel-pager');
    this._prevButton.addEventListener('click', () => {
      if (this._paging.prev()) {
        void this.loadRuns();
      }
    });
    this._nextButton.addEventListener('click', () => {
      if (this._paging.next()) {
        void this.loadRuns();
      }
    });
    pager.append(this._prevButton, this._rangeNode, this._nextButton);
    runs.append(
      el('h3', 'jp-AtomscalePanel-heading', 'Runs'),
      tools,
      this._facetsNode,
      this._listNode,
      pager,
    );

    this._detailNode.appendChild(
      el('div', 'jp-AtomscalePanel-placeholder', 'Select a run to see its summary.'),
    );

    this.node.append(header, this._errorNode, cats, runs, this._detailNode);
  }

  private _syncSortControls(): void {
    this._sortSelect.value = this._paging.sort;
    const desc = this._paging.order === 'desc';
    this._orderButton.textContent = desc ? '↓' : '↑';
    this._orderButton.title = desc
      ? 'Descending (click for ascending)'
      : 'Ascending (click for descending)';
    this._orderButton.setAttribute('aria-label', this._orderButton.title);
  }

  /** Show an error of one source (status, list, notebook) until that source succeeds again. */
  private _showError(source: ErrorSource, message: string): void {
    this._errors.set(source, message);
    this._renderErrors();
  }

  private _clearError(source?: ErrorSource): void {
    if (source) {
      this._errors.delete(source);
    } else {
      this._errors.clear();
    }
    this._renderErrors();
  }

  private _renderErrors(): void {
    const messages = Array.from(new Set(this._errors.values()));
    this._errorNode.textContent = messages.join('\n');
    this._errorNode.hidden = messages.length === 0;
  }

  private _renderStatus(status: IStatus): void {
    const rows: [string, string, string][] = [
      ['Organization', status.org, 'org'],
      ['Residency', (status.region || '—').toUpperCase(), 'region'],
      [
        'Key',
        status.key ? `v${status.key.version} · ${status.key.fingerprint}` : 'unavailable',
        'key',
      ],
    ];
    if (status.role) {
      rows.push(['Role', status.role, 'role']);
    }
    this._orgNode.replaceChildren();
    for (const [label, value, name] of rows) {
      const dd = el('dd', `jp-AtomscalePanel-${name}`, value);
      dd.title = value;
      this._orgNode.append(el('dt', '', label), dd);
    }
    this._categoriesNode.replaceChildren();
    for (const [name, cat] of Object.entries(status.categories ?? {})) {
      const li = el('li', 'jp-AtomscalePanel-category');
      li.dataset.category = name;
      li.append(
        el('span', 'jp-AtomscalePanel-categoryName', name.replace('_', ' ')),
        el('span', 'jp-AtomscalePanel-count', `${formatCount(cat.rows)} rows`),
      );
      const tables = Object.entries(cat.tables ?? {});
      if (tables.length > 1) {
        li.title = tables.map(([t, n]) => `${t}: ${formatCount(n)}`).join('\n');
      }
      this._categoriesNode.appendChild(li);
    }
  }

  private _renderRuns(runs: IRun[]): void {
    this._listNode.replaceChildren();
    for (const run of runs) {
      const li = el('li', 'jp-AtomscalePanel-run');
      li.dataset.runId = run.run_id;
      li.setAttribute('role', 'option');
      li.tabIndex = 0;
      li.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') {
          ev.preventDefault();
          void this.select(run.run_id);
        } else if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
          ev.preventDefault();
          const next = ev.key === 'ArrowDown' ? li.nextElementSibling : li.previousElementSibling;
          (next as HTMLElement | null)?.focus();
        }
      });
      const on = run.run_id === this._selected;
      li.classList.toggle('jp-mod-selected', on);
      li.setAttribute('aria-selected', on ? 'true' : 'false');
      const top = el('div', 'jp-AtomscalePanel-runTop');
      top.append(
        el('span', 'jp-AtomscalePanel-runId', run.run_id),
        el('span', `jp-AtomscalePanel-status jp-mod-${run.status ?? 'unknown'}`, run.status ?? ''),
      );
      const meta = [run.sample, run.instrument, formatTime(run.start)].filter(Boolean).join(' · ');
      li.append(top, el('div', 'jp-AtomscalePanel-runMeta', meta));
      this._listNode.appendChild(li);
    }
    this._rangeNode.textContent = this._paging.rangeLabel();
    this._prevButton.disabled = !this._paging.canPrev;
    this._nextButton.disabled = !this._paging.canNext;
    this.node.dataset.total = String(this._paging.total);
  }

  private _renderDetail(d: IRunDetail): void {
    const node = this._detailNode;
    node.replaceChildren();
    const head = el('div', 'jp-AtomscalePanel-detailHead');
    head.append(
      el('h3', 'jp-AtomscalePanel-detailTitle', d.run_id),
      el('span', `jp-AtomscalePanel-status jp-mod-${d.status ?? 'unknown'}`, d.status ?? ''),
    );
    node.appendChild(head);

    const dl = el('dl', 'jp-AtomscalePanel-fields');
    const fields: [string, string | null | undefined][] = [
      ['Project', d.project],
      ['Sample', d.sample],
      ['Instrument', d.instrument],
      ['Method', d.method],
      ['Operator', d.operator],
      ['Start', formatTime(d.start)],
      ['End', d.end ? formatTime(d.end) : 'running'],
    ];
    if (d.rows) {
      fields.push([
        'Rows',
        `process ${formatCount(d.rows.process)}, tool state ${formatCount(d.rows.tool_state)}`,
      ]);
    }
    for (const [label, value] of fields) {
      dl.append(el('dt', '', label), el('dd', '', value || '—'));
    }
    node.appendChild(dl);

    node.appendChild(el('div', 'jp-AtomscalePanel-plot'));
    node.appendChild(el('div', 'jp-AtomscalePanel-rheedBox'));

    for (const [cat, label] of [
      ['process', 'Process channels'],
      ['tool_state', 'Tool-state channels'],
    ] as const) {
      const channels = d.channels?.[cat] ?? [];
      const box = el('div', 'jp-AtomscalePanel-channels');
      box.dataset.category = cat;
      box.appendChild(el('h4', 'jp-AtomscalePanel-subheading', `${label} (${channels.length})`));
      const chips = el('div', 'jp-AtomscalePanel-chips');
      for (const ch of channels) {
        chips.appendChild(el('span', 'jp-AtomscalePanel-chip', ch));
      }
      if (!channels.length) {
        chips.appendChild(el('span', 'jp-AtomscalePanel-none', 'none'));
      }
      box.appendChild(chips);
      node.appendChild(box);
    }

    const met = el('div', 'jp-AtomscalePanel-metrology');
    met.appendChild(
      el('h4', 'jp-AtomscalePanel-subheading', `Metrology (${(d.metrology ?? []).length})`),
    );
    const ul = el('ul', 'jp-AtomscalePanel-metrologyList');
    for (const item of d.metrology ?? []) {
      const li = el('li', '', `${item.technique} · ${formatTime(item.time)}`);
      li.title = item.item_id;
      li.dataset.itemId = item.item_id;
      ul.appendChild(li);
    }
    if (!(d.metrology ?? []).length) {
      ul.appendChild(el('li', 'jp-AtomscalePanel-none', 'none'));
    }
    met.appendChild(ul);
    node.appendChild(met);

    const open = el(
      'button',
      'jp-AtomscalePanel-open jp-Button jp-mod-styled jp-mod-accept',
      'Open in notebook',
    );
    open.title = 'Insert a cell that loads this run into the active notebook';
    open.addEventListener('click', async () => {
      if (!this.onOpenInNotebook) {
        return;
      }
      open.disabled = true;
      try {
        await this.onOpenInNotebook(d.run_id);
        this._clearError('notebook');
      } catch (err) {
        this._showError('notebook', `Could not open a notebook: ${describe(err)}`);
      } finally {
        open.disabled = false;
      }
    });
    node.appendChild(open);
  }

  private async _loadRheed(
    d: IRunDetail,
    ticket: { id: number; signal: AbortSignal },
  ): Promise<void> {
    const box = this._detailNode.querySelector('.jp-AtomscalePanel-rheedBox') as HTMLElement | null;
    this.rheedPlot = null;
    if (!box || !(d.channels?.process ?? []).includes(RHEED_CHANNEL)) {
      return;
    }
    box.dataset.state = 'loading';
    try {
      const doc = await this._client.rheed(d.run_id, this._settings.maxPoints * 4, ticket.signal);
      if (!this._detailReq.isCurrent(ticket)) {
        return;
      }
      const plot = new RheedPlot(doc);
      this.rheedPlot = plot;
      box.append(
        el('h4', 'jp-AtomscalePanel-subheading', 'RHEED (UTC; wheel to zoom, drag to pan)'),
        plot.node,
        el('div', 'jp-AtomscalePanel-rheedSummary', rheedSummary(doc)),
      );
      box.dataset.state = 'ready';
    } catch (err) {
      if (isAbort(err) || !this._detailReq.isCurrent(ticket)) {
        return;
      }
      box.appendChild(el('div', 'jp-AtomscalePanel-error jp-mod-inline', describe(err)));
      box.dataset.state = 'error';
    }
  }

  private async _loadPlot(
    d: IRunDetail,
    ticket: { id: number; signal: AbortSignal },
  ): Promise<void> {
    const plot = this._detailNode.querySelector('.jp-AtomscalePanel-plot') as HTMLElement | null;
    if (!plot) {
      return;
    }
    const channels = d.channels?.process ?? [];
    const wanted = this._settings.plottedChannel;
    const channel = wanted && channels.includes(wanted) ? wanted : channels[0];
    if (!channel) {
      plot.appendChild(el('div', 'jp-AtomscalePanel-none', 'No process channels to plot.'));
      return;
    }
    plot.dataset.channel = channel;
    try {
      const frame = await this._client.process(
        d.run_id,
        [channel],
        this._settings.maxPoints,
        ticket.signal,
      );
      if (!this._detailReq.isCurrent(ticket)) {
        return;
      }
      const series = frameToSeries(frame, channel);
      const path = sparklinePath(series.t, series.v, SPARK_W, SPARK_H);
      const ys = extent(series.v);
      const caption = el('div', 'jp-AtomscalePanel-plotCaption');
      caption.append(
        el(
          'span',
          'jp-AtomscalePanel-plotChannel',
          series.unit ? `${channel} [${series.unit}]` : channel,
        ),
        el(
          'span',
          'jp-AtomscalePanel-plotRange',
          ys
            ? `${formatValue(ys[0])} – ${formatValue(ys[1])} · ${series.v.length} pts`
            : 'no values',
        ),
      );
      plot.appendChild(caption);
      if (path) {
        const ns = 'http://www.w3.org/2000/svg';
        const svg = document.createElementNS(ns, 'svg');
        svg.setAttribute('class', 'jp-AtomscalePanel-sparkline');
        svg.setAttribute('viewBox', `0 0 ${SPARK_W} ${SPARK_H}`);
        svg.setAttribute('preserveAspectRatio', 'none');
        svg.setAttribute('role', 'img');
        svg.setAttribute('aria-label', `${channel} over the run`);
        const p = document.createElementNS(ns, 'path');
        p.setAttribute('d', path);
        p.setAttribute('vector-effect', 'non-scaling-stroke');
        svg.appendChild(p);
        plot.appendChild(svg);
      }
      plot.dataset.points = String(series.v.length);
    } catch (err) {
      if (isAbort(err) || !this._detailReq.isCurrent(ticket)) {
        return;
      }
      plot.appendChild(el('div', 'jp-AtomscalePanel-error jp-mod-inline', describe(err)));
    }
  }
}
