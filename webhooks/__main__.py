from webhooks.cli import main

raise SystemExit(main())
