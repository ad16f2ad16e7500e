from __future__ import annotations

from wsi_ocelot.cli import main

raise SystemExit(main())
