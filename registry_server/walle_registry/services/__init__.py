"""The registry's business logic by resource, independent of HTTP.

One module per resource: :mod:`.credentials` (tokens and publisher keys), :mod:`.publishing`
(releases, plugin wheels and blobs), :mod:`.devices`, :mod:`.deployments` (task rollouts),
:mod:`.plugin_deployments` (plugin rollouts), :mod:`.results`; :mod:`.grants` says what a
device may download. Every mutating method runs in one database transaction and returns the push
notices it created; the caller hands those to the broker *after* the commit, so a device is never
told about a notice it could not read back from the database. :class:`walle_registry.context.Registry`
wires the services together.
"""
