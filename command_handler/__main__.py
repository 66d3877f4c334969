from command_handler.entrypoints.cli import main

raise SystemExit(main())
