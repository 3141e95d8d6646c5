"""HTTP routes by resource, one :class:`fastapi.APIRouter` each; :mod:`.deps` holds the auth
dependencies they share. :func:`walle_registry.app.create_app` includes them."""
