"use strict"; // the error page needs no script; this file keeps the page template uniform
