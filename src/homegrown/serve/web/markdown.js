/* A small Markdown renderer for model replies: headings, paragraphs, lists, quotes, tables, rules, fenced code
 * blocks and inline code/bold/italic/strike/links.
 *
 * Safe by construction: every piece of source text is HTML-escaped before any tag is added, and links are
 * kept only for http(s) and mailto URLs, so model output can never inject markup or script. An unclosed
 * ``` fence renders as an open code block, which is what a reply still being streamed looks like.
 */
(function () {
  "use strict";

  var ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) { return ESC[c]; });
  }

  function safeUrl(url) {
    var trimmed = url.trim();
    return /^(https?:\/\/|mailto:)/i.test(trimmed) ? trimmed : null;
  }

  /* Inline spans of one already-split block. Code spans and links become numbered placeholders first, so
   * emphasis rules never reach inside them. */
  function inline(text) {
    var held = [];
    function hold(html) { held.push(html); return "\u0000" + (held.length - 1) + "\u0000"; }
    var out = text.replace(/(`+)([\s\S]*?[^`])\1(?!`)/g, function (_, ticks, code) {
      return hold("<code>" + escapeHtml(code.replace(/^ ([\s\S]*) $/, "$1")) + "</code>");
    });
    out = out.replace(/\[([^\]\n]+)\]\(([^()\s]+)\)/g, function (whole, label, url) {
      var href = safeUrl(url);
      if (!href) return whole;
      return hold('<a href="' + escapeHtml(href) + '" target="_blank" rel="noopener noreferrer">' +
        escapeHtml(label) + "</a>");
    });
    out = out.replace(/\bhttps?:\/\/[^\s<>"'`\u0000]+[^\s<>"'`\u0000.,;:!?)\]]/g, function (url) {
      return hold('<a href="' + escapeHtml(url) + '" target="_blank" rel="noopener noreferrer">' + escapeHtml(url) + "</a>");
    });
    out = escapeHtml(out)
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
      .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
      .replace(/\n/g, "<br>");
    return out.replace(/\u0000(\d+)\u0000/g, function (_, i) { return held[Number(i)]; });
  }

  var FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
  var HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  var RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
  var QUOTE = /^ {0,3}> ?(.*)$/;
  var ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  var TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

  function cells(row) {
    return row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map(function (c) { return c.trim(); });
  }

  function codeBlock(lang, code) {
    var label = lang ? escapeHtml(lang) : "code";
    var cls = lang ? ' class="language-' + escapeHtml(lang) + '"' : "";
    return '<div class="codeblock"><div class="code-head"><span>' + label + '</span>' +
      '<button type="button" class="copy">Copy</button></div><pre><code' + cls + ">" + escapeHtml(code) +
      "</code></pre></div>";
  }

  function blocks(lines) {
    var html = [];
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      var m;
      if (!line.trim()) { i++; continue; }
      if ((m = FENCE.exec(line))) {
        var fence = m[1];
        var body = [];
        i++;
        while (i < lines.length && !(lines[i].trim().indexOf(fence) === 0 &&
               lines[i].trim().replace(new RegExp("^\\" + fence[0] + "+"), "") === "")) {
          body.push(lines[i]);
          i++;
        }
        i++; // the closing fence (or the end of a reply still being streamed)
        html.push(codeBlock(m[2], body.join("\n")));
        continue;
      }
      if ((m = HEADING.exec(line))) {
        html.push("<h" + m[1].length + ">" + inline(m[2]) + "</h" + m[1].length + ">");
        i++;
        continue;
      }
      if (RULE.test(line)) { html.push("<hr>"); i++; continue; }
      if (QUOTE.test(line)) {
        var quoted = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) { quoted.push(m[1]); i++; }
        html.push("<blockquote>" + blocks(quoted) + "</blockquote>");
        continue;
      }
      if (line.indexOf("|") !== -1 && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) &&
          lines[i + 1].indexOf("-") !== -1) {
        var head = cells(line);
        var rows = [];
        i += 2;
        while (i < lines.length && lines[i].indexOf("|") !== -1 && lines[i].trim()) { rows.push(cells(lines[i])); i++; }
        html.push("<table><thead><tr>" + head.map(function (c) { return "<th>" + inline(c) + "</th>"; }).join("") +
          "</tr></thead><tbody>" + rows.map(function (r) {
            return "<tr>" + head.map(function (_, k) { return "<td>" + inline(r[k] || "") + "</td>"; }).join("") + "</tr>";
          }).join("") + "</tbody></table>");
        continue;
      }
      if ((m = ITEM.exec(line))) {
        var ordered = /\d/.test(m[2]);
        var start = ordered ? parseInt(m[2], 10) : 1;
        var items = [];
        while (i < lines.length) {
          var im = ITEM.exec(lines[i]);
          if (im && /\d/.test(im[2]) === ordered) { items.push(im[3]); i++; continue; }
          if (lines[i].trim() && /^\s+/.test(lines[i]) && !FENCE.test(lines[i])) {
            items[items.length - 1] += "\n" + lines[i].trim();
            i++;
            continue;
          }
          break;
        }
        var tag = ordered ? "ol" : "ul";
        var attr = ordered && start !== 1 ? ' start="' + start + '"' : "";
        html.push("<" + tag + attr + ">" + items.map(function (t) { return "<li>" + inline(t) + "</li>"; }).join("") +
          "</" + tag + ">");
        continue;
      }
      var para = [];
      while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) &&
             !QUOTE.test(lines[i]) && !RULE.test(lines[i]) && !(para.length && ITEM.test(lines[i]))) {
        para.push(lines[i]);
        i++;
      }
      html.push("<p>" + inline(para.join("\n")) + "</p>");
    }
    return html.join("");
  }

  function renderMarkdown(source) {
    return blocks(String(source).replace(/\u0000/g, "").replace(/\r\n?/g, "\n").split("\n"));
  }

  window.renderMarkdown = renderMarkdown;
  window.escapeHtml = escapeHtml;
})();
