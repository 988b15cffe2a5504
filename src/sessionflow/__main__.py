from sessionflow.cli import main

raise SystemExit(main())
