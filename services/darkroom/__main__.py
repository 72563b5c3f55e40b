from darkroom.cli import main

raise SystemExit(main())
