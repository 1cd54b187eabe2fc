from edgeflow.cli.main import main

raise SystemExit(main())
