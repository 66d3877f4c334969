from open_bank_endpoint.cli import main

raise SystemExit(main())
