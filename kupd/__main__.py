from kupd.cli import main

raise SystemExit(main())
