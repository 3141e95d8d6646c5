from walle_registry.server import main

main()
