/* Qasino web UI: sortable tables, the filter box, Ctrl+Enter in the SQL box
   and the generation age ticking. Plain JavaScript, no dependencies. */
(function () {
  "use strict";

  function cellKey(row, index, numeric) {
    var cell = row.cells[index];
    if (!cell) {
      return numeric ? -Infinity : "";
    }
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    if (numeric) {
      var n = parseFloat(raw);
      return isNaN(n) ? -Infinity : n;
    }
    return raw.trim().toLowerCase();
  }

  function sortBy(table, th) {
    var index = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "number";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (row, position) {
      return { row: row, key: cellKey(row, index, numeric), position: position };
    });
    keyed.sort(function (a, b) {
      var order = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
      if (!ascending) {
        order = -order;
      }
      return order || a.position - b.position;
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
      other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    keyed.forEach(function (item) {
      body.appendChild(item.row);
    });
  }

  function makeSortable(table) {
    if (!table.tHead || !table.tBodies.length) {
      return;
    }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () {
        sortBy(table, th);
      });
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          sortBy(table, th);
        }
      });
    });
  }

  function makeFilter(input) {
    var table = document.getElementById(input.getAttribute("data-filter"));
    var count = document.getElementById("filter-count");
    if (!table || !table.tBodies.length) {
      return;
    }
    function apply() {
      var words = input.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
      var rows = table.tBodies[0].rows;
      var shown = 0;
      Array.prototype.forEach.call(rows, function (row) {
        var text = row.textContent.toLowerCase();
        var match = words.every(function (word) {
          return text.indexOf(word) !== -1;
        });
        row.hidden = !match;
        if (match) {
          shown += 1;
        }
      });
      if (count) {
        count.textContent = words.length ? shown + " of " + rows.length + " shown" : "";
      }
    }
    input.addEventListener("input", apply);
    apply();
  }

  function submitOnCtrlEnter(textarea) {
    textarea.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && textarea.form) {
        event.preventDefault();
        textarea.form.submit();
      }
    });
  }

  function tickAge(badge) {
    var age = document.getElementById("generation-age");
    var start = parseInt(badge.getAttribute("data-age"), 10);
    if (!age || isNaN(start)) {
      return;
    }
    var loaded = Date.now();
    window.setInterval(function () {
      age.textContent = String(start + Math.floor((Date.now() - loaded) / 1000));
    }, 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
    Array.prototype.forEach.call(document.querySelectorAll("input[data-filter]"), makeFilter);
    var sql = document.getElementById("sql");
    if (sql) {
      submitOnCtrlEnter(sql);
    }
    var badge = document.getElementById("generation");
    if (badge) {
      tickAge(badge);
    }
  });
})();
