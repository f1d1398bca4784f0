#!/usr/bin/env bash
# Refreshes the dashboard's screenshots in docs/ (ui-overview.png, ui-jobs.png, ui-job.png):
# runs the browser test, which saves the three pages when WARREN_UI_SCREENSHOTS is set.
# Needs what the tests need, plus Chromium and chromedriver (apt-get install chromium
# chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."
WARREN_REQUIRE_BROWSER=1 WARREN_UI_SCREENSHOTS="$PWD/docs" \
    cargo test -p warren-gateway --test it -- dashboard --exact \
    dashboard::the_dashboard_follows_cancels_and_redrives_jobs_in_a_real_browser
ls -l docs/ui-*.png
