/**
 * The JupyterLab plugin: puts the data browser in the left sidebar and wires it to the server
 * extension, the settings registry and the notebook tracker.
 */

import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { AtomscaleClient } from './client';
import { IOrgConfig, withOrgDefaults } from './orgconfig';
import { DataBrowserPanel, DEFAULT_SETTINGS, IPanelSettings } from './panel';
import { runSnippet } from './snippet';

const PLUGIN_ID = 'atomscale-lab:plugin';

namespace CommandIDs {
  export const open = 'atomscale-lab:open';
  export const refresh = 'atomscale-lab:refresh';
}

/** A stylised film stack on a substrate; `currentColor`-free so the theme's icon colour applies. */
const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <rect x="3" y="17" width="18" height="4" rx="1"/>
    <rect x="5" y="12" width="14" height="3.5" rx="1"/>
    <rect x="7" y="7.5" width="10" height="3" rx="1"/>
    <circle cx="12" cy="4" r="2"/>
  </g>
</svg>`;

const atomscaleIcon = new LabIcon({ name: 'atomscale-lab:icon', svgstr: ICON_SVG });

/** Insert a cell loading `runId` into the active notebook, or into a new one if none is open. */
async function openInNotebook(
  app: JupyterFrontEnd,
  tracker: INotebookTracker | null,
  runId: string,
): Promise<void> {
  const code = runSnippet(runId);
  let panel: NotebookPanel | null = tracker?.currentWidget ?? null;
  if (!panel) {
    panel = (await app.commands.execute('notebook:create-new', {
      kernelName: 'python3',
    })) as NotebookPanel;
    await panel.context.ready;
  }
  const notebook = panel.content;
  const active = notebook.activeCell;
  const reuse =
    active !== null &&
    active !== undefined &&
    active.model.type === 'code' &&
    active.model.sharedModel.getSource().trim() === '';
  if (!reuse) {
    NotebookActions.insertBelow(notebook);
    if (notebook.activeCell && notebook.activeCell.model.type !== 'code') {
      NotebookActions.changeCellType(notebook, 'code');
    }
  }
  notebook.activeCell?.model.sharedModel.setSource(code);
  app.shell.activateById(panel.id);
  notebook.activate();
}

/** Read the panel settings out of the registry's composite values. */
function readSettings(settings: ISettingRegistry.ISettings): IPanelSettings {
  const c = settings.composite as Partial<IPanelSettings>;
  return { ...DEFAULT_SETTINGS, ...c };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'A sidebar browser of the organization’s runs, process data and metrology.',
  autoStart: true,
  optional: [ISettingRegistry, INotebookTracker, ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    registry: ISettingRegistry | null,
    tracker: INotebookTracker | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
  ) => {
    const serverSettings = ServerConnection.makeSettings();
    const client = new AtomscaleClient(serverSettings.baseUrl, (url, init) =>
      ServerConnection.makeRequest(url, init, serverSettings),
    );
    const panel = new DataBrowserPanel(client);
    panel.title.icon = atomscaleIcon;
    panel.onOpenInNotebook = (runId) => openInNotebook(app, tracker, runId);
    app.shell.add(panel, 'left', { rank: 600 });
    restorer?.add(panel, panel.id);

    app.commands.addCommand(CommandIDs.open, {
      label: 'Show Atomscale Data Browser',
      execute: () => app.shell.activateById(panel.id),
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Atomscale Data Browser',
      execute: () => panel.refresh(),
    });
    palette?.addItem({ command: CommandIDs.open, category: 'Atomscale' });
    palette?.addItem({ command: CommandIDs.refresh, category: 'Atomscale' });

    if (registry) {
      registry
        .load(PLUGIN_ID)
        .then(async (settings) => {
          let org: IOrgConfig | null = null;
          const apply = () =>
            panel.applySettings(
              withOrgDefaults(
                readSettings(settings),
                settings.user as Partial<IPanelSettings>,
                org,
              ),
            );
          apply();
          settings.changed.connect(apply);
          try {
            // what support or an org admin set up for everyone (the user's own settings win)
            org = (await client.config()).config;
            apply();
          } catch (reason) {
            console.warn('atomscale-lab: no org configuration', reason);
          }
        })
        .catch((reason) => {
          console.error('atomscale-lab: could not load settings', reason);
        });
    }
  },
};

export default plugin;
