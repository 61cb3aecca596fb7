from zlora.cli import main

raise SystemExit(main())
