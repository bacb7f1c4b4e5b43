"""The vault: a deployment's orgs, keys, encrypted stores, context labels and audit logs, with no
HTTP and no JupyterHub. :class:`~atomscale_lab.vault.facade.Vault` is the entry point."""


def __getattr__(name):
    # Lazy: ``import atomscale_lab.vault.settings`` must not load pyarrow and the key registry.
    if name == "Vault":
        from atomscale_lab.vault.facade import Vault

        return Vault
    raise AttributeError(name)
