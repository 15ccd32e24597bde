"""Human-readable reports: HTML pages, overlays, progress plots."""
